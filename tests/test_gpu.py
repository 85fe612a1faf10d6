"""The claims only a CUDA GPU can check: fp32 master weights under bf16 autocast, packed rows on CUDA sdpa, QLoRA,
FSDP's full-state-dict save, CUDA greedy decoding = CPU greedy decoding, and gpu_step.py's MFU and memory check.

Marked `gpu`: `benchmarks/gpu/check.sh` runs them on a GPU machine (`pytest -m gpu tests/test_gpu.py`); without
CUDA each skips with the reason. They read only the bundled sample (../shared does not travel to the GPU machine)
and tiny models built there. Figures go to stdout and, when `DIALSUM_GPU_FIGURES` names a file, to it as JSON
lines, which check.sh folds into its results.json.

`DIALSUM_GPU_REHEARSAL=1` on a machine without CUDA runs the tests that have a CPU counterpart on the CPU
(bf16 autocast forced where the GPU's `auto` would choose it; QLoRA and FSDP still skip), so their plumbing can be
tried before the one GPU session.
"""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import ROOT, SAMPLE

CUDA = torch.cuda.is_available()
REHEARSAL = not CUDA and os.environ.get("DIALSUM_GPU_REHEARSAL") == "1"
NO_CUDA = "needs a CUDA GPU; none here (benchmarks/gpu/check.sh runs these on a GPU machine)"
PRESET = ROOT / "configs" / "llama-3.2-korean-3b.yaml"

pytestmark = [pytest.mark.gpu, pytest.mark.slow]


@pytest.fixture
def device() -> str:
    """'cuda'; 'cpu' under DIALSUM_GPU_REHEARSAL=1; otherwise the test skips with the reason."""
    if CUDA:
        return "cuda"
    if REHEARSAL:
        return "cpu"
    pytest.skip(NO_CUDA)


def needs_cuda() -> None:
    """For the claims that have no CPU counterpart at all, rehearsal or not."""
    if not CUDA:
        pytest.skip(NO_CUDA + ("; no CPU rehearsal for this one" if REHEARSAL else ""))


@pytest.fixture
def record(request):
    """record(**figures): one JSON line per call, printed and appended to $DIALSUM_GPU_FIGURES."""

    def write(**figures) -> None:
        line = json.dumps({"test": request.node.name, **figures}, ensure_ascii=False, default=str)
        print("figures: " + line)
        path = os.environ.get("DIALSUM_GPU_FIGURES")
        if path:
            from dialsum.writer import append_line

            append_line(path, line)

    return write


def subprocess_env() -> dict:
    """This process's environment with the project's src/ first, for the commands the tests launch."""
    path = os.pathsep.join(p for p in (str(ROOT / "src"), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def tiny_run_config(model_path, **sections):
    """The tiny Llama on the bundled sample: a few optimizer steps, no dev split, nothing checkpointed."""
    from dialsum.config import config_from_dict

    raw = {
        "model": {"name_or_path": str(model_path)},
        "data": {"train": str(SAMPLE / "train.csv")},
        "training": dict(
            max_steps=3,
            per_device_train_batch_size=2,
            gradient_accumulation_steps=1,
            learning_rate=1e-3,
            warmup_ratio=0.0,
            max_length=512,
            save_steps=100,
        ),
        "generation": {"max_new_tokens": 24, "batch_size": 4},
        "logging": {"steps": 1},
    }
    for section, values in sections.items():
        raw[section] = {**raw.get(section, {}), **values}
    return config_from_dict(raw)


def losses(run_dir: Path) -> list[float]:
    from dialsum.rundir import read_jsonl

    return [row["loss"] for row in read_jsonl(run_dir / "metrics.jsonl")[0] if "loss" in row]


def to_device(batch: dict, device: str) -> dict:
    return {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}


# ---------------------------------------------------------------- precision


def test_preset_full_fine_tuning_keeps_fp32_master_weights_under_bf16_autocast(device, tiny_llama, tmp_path, record):
    """The 3B preset's precision path (model.dtype auto, training.bf16 auto, checkpointing and packing on) on CUDA:
    trainable weights and AdamW state fp32, compute bf16; 10 steps at the preset's lr 2e-5 change every tensor,
    every norm included (bf16 weights would round most of these updates away)."""
    from safetensors.torch import load_file

    from dialsum.config import load_config
    from dialsum.train import train

    overrides = [
        f"model.name_or_path={tiny_llama}",
        f"data.train={SAMPLE / 'train.csv'}",
        "data.dev=null",
        "data.test=null",
        "training.max_steps=10",
        "training.per_device_train_batch_size=4",
        "training.gradient_accumulation_steps=1",
        "training.warmup_ratio=0",
        "training.max_length=512",
        "training.save_steps=100",
        "logging.steps=5",
    ]
    if device == "cpu":  # rehearsal: 'auto' is fp32 on a CPU; force the bf16 autocast the GPU's 'auto' chooses
        overrides.append("training.bf16=true")
    config = load_config(PRESET, overrides)
    assert config.model.dtype == "auto" and config.training.learning_rate == 2e-5 and not config.lora.enabled
    assert config.training.gradient_checkpointing and config.training.packing
    if device == "cuda":
        assert config.training.bf16 == "auto"
    run_dir = train(config, output_dir=tmp_path / "run")

    before = load_file(tiny_llama / "model.safetensors")
    after = load_file(run_dir / "model" / "model.safetensors")
    fractions = {}
    for name, tensor in after.items():
        old = before[name]
        if old.shape != tensor.shape:  # the embedding grew by the added speaker tokens: compare the old rows
            tensor = tensor[: old.shape[0]]
        fractions[name] = float((old != tensor).float().mean())
    summary = json.loads((run_dir / "summary.json").read_text())
    env = json.loads((run_dir / "env.json").read_text())
    record(
        device=env["device"],
        precision=summary["precision"],
        changed_fraction_min=min(fractions.values()),
        changed_fraction_norms={k: v for k, v in fractions.items() if "norm" in k},
        losses=losses(run_dir),
    )
    for record_ in (summary["precision"], env["precision"]):
        dtypes = (record_["trainable_weights"], record_["compute"], record_["optimizer_state"])
        assert dtypes == (["float32"], "bfloat16", ["float32"]), record_
    assert after[next(iter(after))].dtype == torch.float32, "model/ holds the fp32 master weights"
    if device == "cuda":
        assert not env["device"].startswith("cpu"), env["device"]
    norms = [k for k in fractions if "norm" in k]
    assert len(norms) == 5, norms  # 2 layers x 2 + the final norm
    # every tensor moved, nearly every element: an element whose Adam steps cancel exactly may stay
    low = {k: v for k, v in fractions.items() if v < 0.95}
    assert not low, low
    assert all(math.isfinite(x) for x in losses(run_dir))


# ---------------------------------------------------------------- packing


def test_packed_rows_equal_padded_batch_on_cuda_sdpa(device, tiny_llama, tmp_path, record):
    """Packed rows on CUDA's sdpa kernels (B x L, no mask, positions restarting): the packed loss equals the padded
    loss of the same examples, a sample inside a row has its logits alone, and the controls (a mask, a KV cache)
    leak. Asserted in fp32; the same comparison under bf16 autocast is recorded."""
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    from dialsum.models import load_model
    from dialsum.packing import PackedBatchCollator, pop_batch_meta
    from dialsum.trainer import build_trainer
    from test_train import encoded, make_config

    config = make_config(tiny_llama, SAMPLE / "train.csv", packing=True, per_device_train_batch_size=8, max_length=1024)
    config.model.attn_implementation = "sdpa"
    config.model.dtype = "float32"
    tokenizer, examples = encoded(config, 40)
    model = load_model(config.model.name_or_path, config)
    model.resize_token_embeddings(len(tokenizer))
    trainer = build_trainer(config, model, tokenizer, examples, [], tmp_path / "run")
    model = trainer.model.eval()
    assert next(model.parameters()).device.type == device and next(model.parameters()).dtype == torch.float32

    rows = [row for row in trainer.train_dataset if len(row["seq_lengths"]) >= 2]
    assert len(rows) >= 2, "the sample should pack several examples into a row"
    rows = [max(rows, key=lambda r: len(r["input_ids"])), min(rows, key=lambda r: len(r["input_ids"]))]
    packed = trainer.data_collator(rows)
    pop_batch_meta(packed)
    short = len(rows[1]["input_ids"])
    assert packed["input_ids"].shape[1] > short, "the short row should be padded"
    samples, spans = [], []
    for r, row in enumerate(rows):
        start = 0
        for length in row["seq_lengths"]:
            samples.append(
                {"input_ids": row["input_ids"][start : start + length], "labels": row["labels"][start : start + length]}
            )
            spans.append((r, start, start + length))
            start += length
    padded = DataCollatorForLanguageModeling(pad_token_id=tokenizer.pad_token_id)(samples)
    flat = PackedBatchCollator(tokenizer.pad_token_id, layout="flat")(rows)
    pop_batch_meta(flat)
    packed, padded, flat = (to_device(b, device) for b in (packed, padded, flat))

    def compare(autocast: bool) -> dict:
        with torch.no_grad(), torch.autocast(device, dtype=torch.bfloat16, enabled=autocast):
            loss_packed = trainer.compute_loss(model, dict(packed)).item()
            loss_padded = trainer.compute_loss(model, dict(padded)).item()
            loss_flat = trainer.compute_loss(model, dict(flat)).item()
            ids, positions = packed["input_ids"], packed["position_ids"]
            logits = model(input_ids=ids, position_ids=positions, use_cache=False).logits.float()
            r, a, b = spans[-1]  # the last sample of the padded row: after another sample, before the padding
            alone = model(input_ids=ids[r : r + 1, a:b], use_cache=False).logits[0].float()
            r0, a0, b0 = spans[0]
            alone0 = model(input_ids=ids[r0 : r0 + 1, a0:b0], use_cache=False).logits[0].float()
            mask = torch.ones_like(ids)
            leaky = model(input_ids=ids, position_ids=positions, attention_mask=mask, use_cache=False).logits.float()
            cached = model(input_ids=ids, position_ids=positions, use_cache=True).logits.float()
        assert r == 1 and a > 0
        return {
            "loss_packed": loss_packed,
            "loss_padded": loss_padded,
            "loss_flat": loss_flat,
            "logits_vs_alone": float((logits[r, a:b] - alone).abs().max()),
            "logits_vs_alone_first_row": float((logits[r0, a0:b0] - alone0).abs().max()),
            "masked_control_vs_alone": float((leaky[r, a:b] - alone).abs().max()),
            "cached_control_vs_alone": float((cached[r, a:b] - alone).abs().max()),
        }

    fp32, bf16 = compare(autocast=False), compare(autocast=True)
    record(device=device, rows=[len(r["seq_lengths"]) for r in rows], fp32=fp32, bf16_autocast=bf16)
    assert abs(fp32["loss_packed"] - fp32["loss_padded"]) < 1e-4, fp32
    assert abs(fp32["loss_flat"] - fp32["loss_padded"]) < 1e-4, fp32
    assert fp32["logits_vs_alone"] < 1e-4 and fp32["logits_vs_alone_first_row"] < 1e-4, fp32
    # the controls must leak by far more than the isolated rows differ, or the comparison proves nothing
    assert fp32["masked_control_vs_alone"] > 1e-3 and fp32["cached_control_vs_alone"] > 1e-3, fp32


# ---------------------------------------------------------------- QLoRA


def test_qlora_trains_and_predicts(tiny_llama, tmp_path, record):
    """QLoRA where bitsandbytes is carried: adapters train on a 4-bit NF4 base (frozen weights stored as uint8),
    the adapter saves, and predict summarises every dialogue from the run directory."""
    needs_cuda()
    pytest.importorskip("bitsandbytes", reason="bitsandbytes is not installed (benchmarks/gpu/prepare.sh carries it)")
    from dialsum.data import load_dialogues
    from dialsum.predict import predict
    from dialsum.train import train

    config = tiny_run_config(tiny_llama, lora={"enabled": True, "load_in_4bit": True, "r": 4})
    run_dir = train(config, output_dir=tmp_path / "q")
    summary = json.loads((run_dir / "summary.json").read_text())
    output = tmp_path / "dev_predictions.csv"
    stats = predict(run_dir, SAMPLE / "dev.csv", output, progress=False)
    record(precision=summary["precision"], losses=losses(run_dir), predict=stats)
    assert (run_dir / "model" / "adapter_config.json").is_file()
    assert len(losses(run_dir)) == 3 and all(math.isfinite(x) for x in losses(run_dir))
    assert "uint8" in summary["precision"]["frozen_weights"], summary["precision"]  # NF4 storage
    assert summary["precision"]["trainable_weights"] and "uint8" not in summary["precision"]["trainable_weights"]
    import csv

    with output.open(encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["fname"] for r in rows] == [d.id for d in load_dialogues(SAMPLE / "dev.csv")]
    assert stats["n"] == len(rows)


# ---------------------------------------------------------------- FSDP


def test_fsdp_single_process_run_saves_a_model_that_reloads(tiny_llama, tmp_path, record):
    """`accelerate launch --config_file configs/accelerate/fsdp.yaml --num_processes 1`: FSDP is really on
    (env.json's distributed), the final save gathers a full state dict although checkpoints stay sharded, and
    model/ reloads with every tensor at full shape and the trained values."""
    needs_cuda()
    import yaml
    from safetensors.torch import load_file

    config = tiny_run_config(tiny_llama, training={"save_steps": 2})  # a checkpoint (sharded) at step 2
    path = tmp_path / "fsdp.yaml"
    path.write_text(yaml.safe_dump(config.to_dict(), allow_unicode=True), encoding="utf-8")
    run_dir = tmp_path / "run"
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(ROOT / "configs" / "accelerate" / "fsdp.yaml"),
        "--num_processes",
        "1",
        "--main_process_port",
        str(free_port()),
        "-m",
        "dialsum.cli",
        "train",
        str(path),
        "--output-dir",
        str(run_dir),
    ]
    result = subprocess.run(command, capture_output=True, text=True, env=subprocess_env(), timeout=220, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-4000:]
    env = json.loads((run_dir / "env.json").read_text())
    checkpoints = sorted(str(p.relative_to(run_dir)) for p in (run_dir / "checkpoints").glob("*/*"))
    record(
        distributed=env["distributed"],
        world_size=env["world_size"],
        precision=env["precision"],
        checkpoint_files=checkpoints,
        losses=losses(run_dir),
    )
    assert env["distributed"] == "FSDP", env["distributed"]
    assert "FSDP: gathering a full state dict" in result.stderr + result.stdout
    weights = load_file(run_dir / "model" / "model.safetensors")
    base = load_file(tiny_llama / "model.safetensors")
    assert set(base) <= set(weights) | {"lm_head.weight"}, sorted(set(base) - set(weights))
    for name, tensor in base.items():
        if name in weights:
            assert weights[name].shape[1:] == tensor.shape[1:] and weights[name].shape[0] >= tensor.shape[0], name
    compared = [name for name in base if name in weights]
    same = [n for n in compared if torch.equal(weights[n][: len(base[n])].float(), base[n].float())]
    assert compared and not same, f"tensors that did not train: {same}"
    assert (run_dir / "checkpoints" / "checkpoint-2").is_dir(), checkpoints

    from dialsum.models import load_for_inference

    model, tokenizer, _ = load_for_inference(run_dir)
    probe = tokenizer("안녕하세요", return_tensors="pt").to(model.device)
    with torch.no_grad():
        logits = model(**probe).logits
    assert torch.isfinite(logits).all()
    state = model.state_dict()
    name = next(n for n in weights if n in state)
    loaded = state[name].cpu()
    assert torch.equal(loaded, weights[name].to(loaded.dtype)), "model/ reloads the saved weights"


# ---------------------------------------------------------------- generation


def test_greedy_predict_on_cuda_equals_cpu(device, tiny_llama, tmp_path, monkeypatch, record):
    """The same tiny model, fp32, greedy: `dialsum predict` on CUDA writes the summaries the CPU writes (the CUDA
    path of batching, left padding, suppression and clean-up changes no decision). bf16 on CUDA is recorded.

    The random tiny Llama's weights are scaled up first (x6): as built, it writes nothing but byte fragments (every
    summary empty after clean-up) and a few training steps make it write one phrase for every dialogue; scaled, it
    writes a different summary for each dialogue, with wide margins between its top logits."""
    import csv

    from transformers import AutoModelForCausalLM, AutoTokenizer

    import dialsum.models
    from dialsum.config import config_from_dict
    from dialsum.predict import predict

    model_dir = tmp_path / "sharp-llama"
    model = AutoModelForCausalLM.from_pretrained(tiny_llama)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.dim() == 2:
                parameter.mul_(6.0)
    model.save_pretrained(model_dir)
    AutoTokenizer.from_pretrained(tiny_llama).save_pretrained(model_dir)

    def run(name: str, dtype: str, cuda: bool) -> list[str]:
        config = config_from_dict(
            {
                "model": {"name_or_path": str(model_dir), "dtype": dtype},
                "generation": {"max_new_tokens": 24, "batch_size": 4, "num_beams": 1, "do_sample": False},
            }
        )
        with monkeypatch.context() as patch:
            if not cuda:
                patch.setattr(dialsum.models, "has_cuda", lambda: False)
            predict(model_dir, SAMPLE / "dev.csv", tmp_path / f"{name}.csv", config=config, progress=False)
        with (tmp_path / f"{name}.csv").open(encoding="utf-8") as handle:
            return [row["summary"] for row in csv.DictReader(handle)]

    precision = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")  # fp32 matmuls stay fp32, no TF32 (torch's default)
    try:
        cpu = run("reference-cpu", "float32", cuda=False)
        accelerated = run(f"{device}-fp32", "float32", cuda=device == "cuda")
        bf16 = run(f"{device}-bf16", "bfloat16", cuda=device == "cuda")
    finally:
        torch.set_float32_matmul_precision(precision)
    record(
        device=device,
        n=len(cpu),
        float32_matmul_precision_default=precision,
        distinct=len(set(cpu)),
        equal_fp32=sum(a == b for a, b in zip(cpu, accelerated)),
        equal_bf16=sum(a == b for a, b in zip(cpu, bf16)),
        characters=sum(map(len, cpu)),
    )
    assert len(cpu) == 10 and all(cpu) and len(set(cpu)) >= 8, cpu  # something to compare
    assert accelerated == cpu


# ---------------------------------------------------------------- gpu_step.py


def test_gpu_step_measures_the_3b_architecture(device, tmp_path, record):
    """benchmarks/gpu_step.py on Llama-3.2-3B's architecture (random weights), the preset's way (packed rows, sdpa,
    fp32 master weights under bf16 autocast, checkpointing): it runs, and its memory comparison is `dialsum plan`'s
    estimate for exactly this batch, precision and checkpointing. The targets (+-15 %, MFU >= 40 %) are recorded,
    not asserted; what must hold is: the peak holds at least the weights, gradients and AdamW state."""
    output = tmp_path / "gpu_step.json"
    command = [sys.executable, str(ROOT / "benchmarks" / "gpu_step.py"), "--steps", "3", "--warmup", "1"]
    command += ["--checkpointing", "--json", str(output)]
    if device == "cpu":  # rehearsal: the same code on a tiny Llama
        command += ["--arch", "tiny", "--device", "cpu", "--tokens", "1024", "--max-length", "256"]
    result = subprocess.run(command, capture_output=True, text=True, env=subprocess_env(), timeout=220, cwd=ROOT)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    figures = json.loads(output.read_text())
    memory = figures["memory"]
    record(
        tokens_per_second=figures["tokens_per_second"],
        mfu=figures["mfu"],
        mfu_model=figures["mfu_model"],
        matmul_tflops_measured=figures["matmul_tflops_measured"],
        memory_ratio=memory["ratio"],
        measured_peak_gb=memory["measured_peak_gb"],
        estimate_gb=memory["estimate_gb"],
        targets=figures["targets"],
    )
    assert (figures["weights_dtype"], figures["autocast"], figures["optimizer_state_dtype"]) == (
        "float32",
        "bfloat16",
        ["float32"],
    )
    assert figures["checkpointing"] and figures["layout"] == "rows"
    assert figures["losses_finite"] and figures["tokens_per_second"] > 0 and 0 <= figures["mfu"] < 1

    # the estimate is plan's own, for the batch gpu_step ran
    from dialsum.config import config_from_dict
    from dialsum.plan import Architecture, memory_estimate

    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        from gpu_step import llama_config
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    arch = Architecture.from_config(llama_config(figures["arch"]).to_dict())
    assert arch.params == figures["params"], (arch.params, figures["params"])
    plan_config = config_from_dict({"model": {"name_or_path": "gpu_step", "attn_implementation": "sdpa"}})
    parts = memory_estimate(
        arch, plan_config, "full", tokens=memory["plan_tokens"], row_length=memory["plan_row_length"]
    )
    expected = parts["weights"] + parts["gradients"] + parts["optimizer"] + parts["activations_checkpointed"]
    assert memory["estimate_bytes"] == int(expected)
    assert memory["plan_tokens"] == figures["rows"] * figures["row_length"]
    if device == "cuda":
        assert figures["mfu"] > 0 and figures["matmul_tflops_measured"] > 0
        static = parts["weights"] + parts["gradients"] + parts["optimizer"]
        assert memory["measured_peak_bytes"] >= static, (memory, static)
        assert memory["ratio"] > 0
