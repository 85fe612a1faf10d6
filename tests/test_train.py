"""Training engine: leak-free packing, loss goes down, resume, LoRA adapters, seq2seq, 2 processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import ROOT
from dialsum.config import config_from_dict
from dialsum.data import load_dialogues
from dialsum.encode import encode_dialogues, ensure_pad_token
from dialsum.errors import RunDirError
from dialsum.models import load_model, load_tokenizer
from dialsum.rundir import read_jsonl
from dialsum.train import train
from dialsum.trainer import build_trainer

pytestmark = pytest.mark.slow


def make_config(model_path, train_path, **training):
    kind = "seq2seq" if "bart" in str(model_path) else "causal"
    settings = dict(
        max_steps=4,
        per_device_train_batch_size=4,
        gradient_accumulation_steps=1,
        learning_rate=1e-3,
        gradient_checkpointing=False,
        max_length=512,
        packing=False,
        warmup_ratio=0.0,
        save_steps=100,
    )
    settings.update(training)
    return config_from_dict(
        {
            "model": {"name_or_path": str(model_path), "kind": kind},
            "data": {"train": str(train_path)},
            "training": settings,
            "logging": {"steps": 1},
        }
    )


def encoded(config, n):
    tokenizer = load_tokenizer(config.model.name_or_path, config)
    ensure_pad_token(tokenizer)
    dialogues = load_dialogues(config.data.train)[:n]
    examples, _ = encode_dialogues(tokenizer, dialogues, config)
    return tokenizer, examples


def train_losses(run_dir: Path) -> list[float]:
    return [row["loss"] for row in read_jsonl(run_dir / "metrics.jsonl")[0] if "loss" in row]


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_batch_equals_padded_batch(tiny_llama, real_dev_path, tmp_path, attn):
    """Packed rows stay batch rows on sdpa/eager (B x L, no attention mask, position_ids restarting, a shorter row
    padded with a segment of its own). The packed loss equals the padded loss of the same examples, and a sample's
    logits inside a row equal its logits alone: packed samples never attend to each other, nor to the padding."""
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    from dialsum.packing import PackedBatchCollator, pop_batch_meta

    config = make_config(tiny_llama, real_dev_path, packing=True, per_device_train_batch_size=8, max_length=1024)
    config.model.attn_implementation = attn
    tokenizer, examples = encoded(config, 24)
    model = load_model(config.model.name_or_path, config)
    model.resize_token_embeddings(len(tokenizer))
    trainer = build_trainer(config, model, tokenizer, examples, [], tmp_path / "run")
    model = trainer.model.eval()
    first = next(iter(trainer.get_train_dataloader()))
    assert "attention_mask" not in first and first["input_ids"].shape[0] > 1, "rows must stay rows on " + attn
    assert first["input_ids"].shape[1] <= 1024

    # the longest and the shortest row of several samples: the short one carries a padding segment
    rows = [row for row in trainer.train_dataset if len(row["seq_lengths"]) >= 2]
    rows = [max(rows, key=lambda r: len(r["input_ids"])), min(rows, key=lambda r: len(r["input_ids"]))]
    packed = trainer.data_collator(rows)
    meta = pop_batch_meta(packed)
    width = packed["input_ids"].shape[1]
    short = len(rows[1]["input_ids"])
    assert packed["input_ids"].shape == (2, width) and width - short >= 16, "the short row should be padded"
    assert packed["position_ids"][1, short] == 0, "the padding restarts its positions: a segment of its own"
    assert (packed["labels"][1, short:] == -100).all()
    assert meta == {
        "dialsum_examples": sum(len(r["seq_lengths"]) for r in rows),
        "dialsum_real_tokens": sum(len(r["input_ids"]) for r in rows),
    }

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
    flat = PackedBatchCollator(tokenizer.pad_token_id, layout="flat")(rows)  # TRL's flattened form, for flash-attention
    pop_batch_meta(flat)
    with torch.no_grad():
        loss_packed = trainer.compute_loss(model, dict(packed)).item()
        loss_padded = trainer.compute_loss(model, dict(padded)).item()
        loss_flat = trainer.compute_loss(model, dict(flat)).item()
        assert abs(loss_packed - loss_padded) < 1e-4, (loss_packed, loss_padded)
        assert abs(loss_flat - loss_padded) < 1e-4, (loss_flat, loss_padded)

        ids, positions = packed["input_ids"], packed["position_ids"]
        logits_packed = model(input_ids=ids, position_ids=positions, use_cache=False).logits
        r, a, b = spans[-1]  # the last sample of the padded row: after another sample, before the padding
        assert r == 1 and a > 0
        logits_alone = model(input_ids=ids[r : r + 1, a:b], use_cache=False).logits[0]
        assert torch.allclose(logits_packed[r, a:b], logits_alone, atol=1e-4)
        r0, a0, b0 = spans[0]  # a sample in the other row, which holds no padding
        alone0 = model(input_ids=ids[r0 : r0 + 1, a0:b0], use_cache=False).logits[0]
        assert torch.allclose(logits_packed[r0, a0:b0], alone0, atol=1e-4)
        # The controls: the same rows with an attention mask, or with a KV cache built, leak across samples.
        mask = torch.ones_like(ids)
        leaky = model(input_ids=ids, position_ids=positions, attention_mask=mask, use_cache=False).logits
        assert not torch.allclose(leaky[r, a:b], logits_alone, atol=1e-4)
        cached = model(input_ids=ids, position_ids=positions, use_cache=True).logits
        assert not torch.allclose(cached[r, a:b], logits_alone, atol=1e-4)


def test_packed_micro_batches_hold_the_configured_examples(tiny_llama, real_dev_path, tmp_path):
    """With packing, a micro-batch holds per_device_train_batch_size examples on average (the recipe's effective
    batch of examples), not that many packed rows; `packing_batch_unit: rows` opts into rows."""
    from dialsum.packing import pop_batch_meta

    config = make_config(
        tiny_llama,
        real_dev_path,
        packing=True,
        per_device_train_batch_size=8,
        max_length=1024,
        gradient_accumulation_steps=2,
    )
    tokenizer, examples = encoded(config, 160)
    model = load_model(config.model.name_or_path, config)
    model.resize_token_embeddings(len(tokenizer))
    trainer = build_trainer(config, model, tokenizer, examples, [], tmp_path / "run")
    batches = list(trainer.get_train_dataloader())
    counts = [pop_batch_meta(b)["dialsum_examples"] for b in batches]
    assert sum(counts) == len(examples), "every example once per epoch"
    assert abs(sum(counts) / len(counts) - 8) <= 0.8, counts
    assert max(b["input_ids"].shape[0] for b in batches) <= 8, "never more rows than the padded batch"
    assert trainer.optimizer_steps_per_epoch == -(-len(batches) // 2)

    config.training.packing_batch_unit = "rows"
    trainer = build_trainer(config, model, tokenizer, examples, [], tmp_path / "rows")
    batch = next(iter(trainer.get_train_dataloader()))
    assert batch["input_ids"].shape[0] == 8 and pop_batch_meta(batch)["dialsum_examples"] > 8


@pytest.mark.parametrize("arch,packing,batch", [("llama", True, 2), ("qwen2", False, 4), ("bart", False, 8)])
def test_loss_goes_down(arch, packing, batch, request, real_dev_path, tmp_path):
    model_path = request.getfixturevalue(f"tiny_{arch}")
    config = make_config(
        model_path, real_dev_path, max_steps=24, packing=packing, per_device_train_batch_size=batch, learning_rate=3e-3
    )
    run_dir = train(config, output_dir=tmp_path / "run")
    losses = train_losses(run_dir)
    assert len(losses) == 24
    assert sum(losses[-4:]) / 4 < sum(losses[:4]) / 4 - 0.5, losses
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["steps"] == 24 and summary["tokens_per_second"] > 0
    # the counter itself is tested on batches of known padding in test_token_counts.py
    assert 0 < summary["real_token_fraction"] < 1  # padded rows, or packed rows padded to the longest one
    if packing:  # rows are padded to the longest row of the micro-batch; BFD fills them almost to max_length
        assert 0.9 < summary["real_token_fraction"] < 1.0
        assert summary["packing_layout"] == "rows" and summary["effective_batch_unit"] == "examples"
    assert summary["examples_per_optimizer_step"] == pytest.approx(batch, rel=0.1), summary
    assert summary["optimizer_steps_per_epoch"] >= 1
    for name in ("config.yaml", "env.json", "metrics.jsonl", "model/config.json", "model/model.safetensors"):
        assert (run_dir / name).is_file(), name
    row = read_jsonl(run_dir / "metrics.jsonl")[0][1]
    assert {
        "step",
        "epoch",
        "loss",
        "grad_norm",
        "learning_rate",
        "tokens_per_second",
        "real_token_fraction",
    } <= row.keys()


def test_gradient_checkpointing_matches_the_loss_without_it(tiny_llama, real_dev_path, tmp_path, monkeypatch):
    """`gradient_checkpointing: true` (every real preset's default) recomputes activations, non-reentrant, and
    changes no number: the same per-step losses and weights as without it, on packed batches."""
    import transformers.modeling_utils

    real_checkpoint = transformers.modeling_utils.checkpoint
    calls = []

    def recording_checkpoint(function, *args, **kwargs):  # the real torch checkpoint, with its kwargs noted
        calls.append(kwargs.get("use_reentrant"))
        return real_checkpoint(function, *args, **kwargs)

    monkeypatch.setattr(transformers.modeling_utils, "checkpoint", recording_checkpoint)
    runs = {}
    for checkpointing in (False, True):
        calls.clear()
        config = make_config(
            tiny_llama,
            real_dev_path,
            max_steps=3,
            packing=True,
            per_device_train_batch_size=2,
            gradient_checkpointing=checkpointing,
        )
        runs[checkpointing] = train(config, output_dir=tmp_path / f"gc-{checkpointing}")
        if checkpointing:
            assert calls and set(calls) == {False}, calls  # every layer recomputed, never the reentrant variant
        else:
            assert calls == []
    assert train_losses(runs[True]) == pytest.approx(train_losses(runs[False]), abs=1e-5)
    from safetensors.torch import load_file

    a, b = (load_file(runs[flag] / "model" / "model.safetensors") for flag in (False, True))
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)


def test_checkpointing_is_passed_under_the_installed_transformers_name(tmp_path):
    """transformers renamed gradient_checkpointing to activation_checkpointing (the old name a deprecated alias);
    5.17, the GPU image's, knows only the old one and rejects the new. Either way checkpointing is on, non-reentrant,
    and no deprecation warning is raised."""
    import warnings
    from dataclasses import fields

    from transformers import TrainingArguments

    from dialsum.trainer import training_arguments

    sample = ROOT / "src" / "dialsum" / "sample_data" / "train.csv"
    known = {f.name for f in fields(TrainingArguments)}
    name = "activation_checkpointing" if "activation_checkpointing" in known else "gradient_checkpointing"
    for enabled in (True, False):
        config = make_config("tiny:llama", sample, gradient_checkpointing=enabled)
        with warnings.catch_warnings():
            warnings.filterwarnings("error", message=".*checkpointing.*deprecated", category=FutureWarning)
            args = training_arguments(config, tmp_path / "run", has_dev=False, seq2seq=False)
        assert getattr(args, name) is enabled
        assert getattr(args, f"{name}_kwargs") == ({"use_reentrant": False} if enabled else None)


def test_grad_norm_spikes_are_logged(tiny_llama, real_dev_path, tmp_path):
    """Only steps above the threshold are spikes, filed under their own step. At this learning rate step 2's norm
    jumps (observed 1.00, 7.98, 0.85), so a threshold of 3 splits the run into spike and not-spike steps."""
    config = make_config(tiny_llama, real_dev_path, max_steps=3, learning_rate=3e-2, grad_norm_threshold=3.0)
    run_dir = train(config, output_dir=tmp_path / "run")
    norms = {row["step"]: row["grad_norm"] for row in read_jsonl(run_dir / "metrics.jsonl")[0] if "grad_norm" in row}
    assert sorted(norms) == [1, 2, 3]
    assert norms[2] > 3.0 > max(norms[1], norms[3]), norms
    spikes = json.loads((run_dir / "summary.json").read_text())["grad_norm_spikes"]
    assert [step for step, _ in spikes] == [2]
    assert spikes[0][1] == pytest.approx(norms[2], rel=1e-5)


def test_resume_matches_uninterrupted_run(tiny_llama, real_dev_path, tmp_path):
    config = make_config(tiny_llama, real_dev_path, max_steps=6, save_steps=3, save_total_limit=None)
    full = train(config, output_dir=tmp_path / "full")
    interrupted = train(config, output_dir=tmp_path / "cut")
    # Simulate a crash after step 3: drop everything written after the first checkpoint.
    import shutil

    shutil.rmtree(interrupted / "checkpoints" / "checkpoint-6")
    shutil.rmtree(interrupted / "model")
    with pytest.raises(RunDirError):
        train(config, output_dir=interrupted)  # never overwritten without --resume
    train(config, output_dir=interrupted, resume=True)
    steps = [row["step"] for row in read_jsonl(interrupted / "metrics.jsonl")[0] if "loss" in row]
    assert steps == [1, 2, 3, 4, 5, 6]
    assert train_losses(interrupted) == pytest.approx(train_losses(full), abs=1e-4)
    from safetensors.torch import load_file

    a = load_file(full / "model" / "model.safetensors")
    b = load_file(interrupted / "model" / "model.safetensors")
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)


def test_packed_resume_mid_epoch_matches_uninterrupted_run(tiny_llama, real_dev_path, tmp_path):
    """Packed micro-batches are reshuffled per epoch (seed + epoch) and skipped on resume like any batches: a run
    resumed in the middle of its second epoch logs the losses of the uninterrupted run."""
    import csv
    import io
    import shutil

    rows = list(csv.DictReader(io.StringIO(real_dev_path.read_text(encoding="utf-8"))))[:24]
    small = tmp_path / "train.csv"
    with small.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0].keys()))
        writer.writeheader()
        writer.writerows(rows)
    config = make_config(
        tiny_llama,
        small,
        packing=True,
        per_device_train_batch_size=4,
        max_length=1024,
        max_steps=10,
        save_steps=4,
        save_total_limit=None,
    )
    full = train(config, output_dir=tmp_path / "full")
    per_epoch = json.loads((full / "summary.json").read_text())["optimizer_steps_per_epoch"]
    assert per_epoch == 6  # 24 examples, 4 per micro-batch, packed or not
    cut = train(config, output_dir=tmp_path / "cut")
    for name in ("checkpoints/checkpoint-10", "model"):
        shutil.rmtree(cut / name, ignore_errors=True)
    train(config, output_dir=cut, resume=True)  # from checkpoint-8: two micro-batches into epoch 2
    assert train_losses(cut) == pytest.approx(train_losses(full), abs=1e-4)


def test_lora_adapter_reloads_and_reproduces_logits(tiny_llama, real_dev_path, tmp_path):
    from peft import PeftModel

    config = make_config(tiny_llama, real_dev_path, max_steps=3, learning_rate=5e-2)
    config.lora.enabled = True
    config.lora.r = 4
    run_dir = tmp_path / "run"
    tokenizer, examples = encoded(config, 16)
    model = load_model(config.model.name_or_path, config)
    model.resize_token_embeddings(len(tokenizer))
    trainer = build_trainer(config, model, tokenizer, examples, [], run_dir)
    trainer.train()
    trainer.save_model(str(run_dir / "model"))
    assert (run_dir / "model" / "adapter_config.json").is_file()
    probe = torch.tensor([examples[0]["input_ids"][:64]])
    with torch.no_grad():
        trained = trainer.model.eval()(input_ids=probe, use_cache=False).logits
        base = load_model(config.model.name_or_path, config)
        base.resize_token_embeddings(len(tokenizer))
        base_logits = base(input_ids=probe).logits
        reloaded = PeftModel.from_pretrained(base, run_dir / "model").eval()(input_ids=probe).logits
    assert not torch.allclose(trained, base_logits, atol=1e-3), "the adapter should have changed the model"
    assert torch.allclose(trained, reloaded, atol=1e-4)


def test_qlora_without_cuda_is_one_clear_error(tiny_llama, real_dev_path, tmp_path, monkeypatch):
    import dialsum.models

    monkeypatch.setattr(dialsum.models, "has_cuda", lambda: False)  # no GPU, also on a machine that has one
    config = make_config(tiny_llama, real_dev_path)
    config.lora.enabled = True
    config.lora.load_in_4bit = True
    from dialsum.errors import ConfigError

    with pytest.raises(ConfigError, match=r"lora\.load_in_4bit=true \(QLoRA\) needs a CUDA GPU"):
        train(config, output_dir=tmp_path / "q")


def test_qlora_trains_adapters_on_cuda(tiny_llama, real_dev_path, tmp_path):
    """Where a CUDA GPU and bitsandbytes are present, QLoRA trains and saves an adapter over a 4-bit base."""
    if not torch.cuda.is_available():
        pytest.skip("QLoRA needs a CUDA GPU; this machine has none (the error path is tested above)")
    pytest.importorskip("bitsandbytes", reason="bitsandbytes is not installed (pip install 'dialsum[qlora]')")
    config = make_config(tiny_llama, real_dev_path, max_steps=2)
    config.lora.enabled = True
    config.lora.load_in_4bit = True
    config.lora.r = 4
    run_dir = train(config, output_dir=tmp_path / "q")
    assert (run_dir / "model" / "adapter_config.json").is_file()
    assert len(train_losses(run_dir)) == 2 and all(loss == loss for loss in train_losses(run_dir))  # no NaN


def test_two_processes_ddp(tiny_llama, real_dev_path, tmp_path):
    """`torchrun --nproc_per_node 2` runs DDP over gloo on the CPU; the effective batch counts both processes."""
    import yaml

    config = make_config(tiny_llama, real_dev_path, max_steps=3, per_device_train_batch_size=2)
    path = tmp_path / "ddp.yaml"
    path.write_text(yaml.safe_dump(config.to_dict(), allow_unicode=True))
    run_dir = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    torchrun = Path(sys.executable).parent / "torchrun"
    import socket

    with socket.socket() as probe:  # a free port, so parallel CI jobs do not collide
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    result = subprocess.run(
        [
            str(torchrun),
            "--nproc_per_node",
            "2",
            "--master_addr",
            "127.0.0.1",
            "--master_port",
            str(port),
            "-m",
            "dialsum.cli",
            "train",
            str(path),
            "--output-dir",
            str(run_dir),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["world_size"] == 2
    assert summary["effective_batch_size"] == 2 * 1 * 2
    assert summary["steps"] == 3


def small_dev(real_dev_path, tmp_path, n=12) -> Path:
    import csv
    import io

    rows = list(csv.DictReader(io.StringIO(real_dev_path.read_text(encoding="utf-8"))))[:n]
    dev = tmp_path / "dev.csv"
    with dev.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0].keys()))
        writer.writeheader()
        writer.writerows(rows)
    return dev


def test_rouge_during_training_selects_the_best_checkpoint(tiny_llama, real_dev_path, tmp_path, monkeypatch):
    """Two evaluations, the second worse by eval_rouge_sum: model/ is the first checkpoint, and summary.json names
    the step, the metric and its value. The scorer is scripted (a random tiny model scores ~0 at every step, so
    real scores would tie); generation, the Trainer's selection and the reload are the real ones."""
    from safetensors.torch import load_file

    import dialsum.schemes

    scripted = iter([30.0, 10.0])

    def score(predictions, references, scheme, **kwargs):
        assert len(predictions) == 4 and scheme == "kiwi"
        value = next(scripted)
        return {"rouge1": value / 2, "rouge2": value / 4, "rougeL": value / 4, "rouge_sum": value}, []

    monkeypatch.setattr(dialsum.schemes, "score_scheme", score)
    config = make_config(tiny_llama, real_dev_path, max_steps=4, eval_steps=2, save_steps=2)
    config.data.dev = str(small_dev(real_dev_path, tmp_path))
    config.evaluation.rouge_during_training = True
    config.evaluation.rouge_subset = 4
    config.evaluation.select_best_by = "eval_rouge_sum"
    config.generation.max_new_tokens = 8
    run_dir = train(config, output_dir=tmp_path / "run")
    rouge_rows = [row for row in read_jsonl(run_dir / "metrics.jsonl")[0] if "eval_rouge_sum" in row]
    assert [(row["step"], row["eval_rouge_sum"]) for row in rouge_rows] == [(2, 30.0), (4, 10.0)]
    assert all({"eval_rouge1", "eval_rouge2", "eval_rougeL"} <= row.keys() for row in rouge_rows)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert (summary["best_step"], summary["best_metric"], summary["best_metric_value"]) == (2, "eval_rouge_sum", 30.0)
    assert "highest eval_rouge_sum" in summary["best_checkpoint_rule"]
    eval_rows = [r for r in read_jsonl(run_dir / "metrics.jsonl")[0] if "eval_loss" in r]
    assert summary["best_eval_loss"] == next(r["eval_loss"] for r in eval_rows if r["step"] == 2)
    final = load_file(run_dir / "model" / "model.safetensors")
    first = load_file(run_dir / "checkpoints" / "checkpoint-2" / "model.safetensors")
    last = load_file(run_dir / "checkpoints" / "checkpoint-4" / "model.safetensors")
    assert all(torch.equal(final[k], first[k]) for k in first)
    assert not all(torch.equal(final[k], last[k]) for k in last)


def test_rouge_during_training_follows_the_dialogsum_scheme(tiny_llama, real_dev_path, tmp_path, monkeypatch):
    """evaluation.scheme=dialogsum: checkpoints are selected by the leaderboard's ROUGE (Mecab + rouge 1.0.1), not
    by Kiwi ROUGE. Mutation caught: the training-time scorer ignoring the scheme (Kiwi's `metrics.score` is
    called instead)."""
    import dialsum.metrics
    import dialsum.schemes

    calls = []

    def score_scheme(predictions, references, scheme, **kwargs):
        calls.append(scheme)
        return {"rouge1": 7.0, "rouge2": 2.0, "rougeL": 5.0, "rouge_sum": 14.0}, []

    def kiwi_score(*args, **kwargs):
        raise AssertionError("Kiwi ROUGE used under evaluation.scheme=dialogsum")

    monkeypatch.setattr(dialsum.schemes, "score_scheme", score_scheme)
    monkeypatch.setattr(dialsum.metrics, "score", kiwi_score)
    config = make_config(tiny_llama, real_dev_path, max_steps=2, eval_steps=2, save_steps=2)
    config.data.dev = str(small_dev(real_dev_path, tmp_path, n=4))
    config.evaluation.scheme = "dialogsum"
    config.evaluation.rouge_during_training = True
    config.evaluation.rouge_subset = 2
    config.generation.max_new_tokens = 4
    run_dir = train(config, output_dir=tmp_path / "run")
    assert calls == ["dialogsum"]
    rows = [row for row in read_jsonl(run_dir / "metrics.jsonl")[0] if "eval_rouge_sum" in row]
    assert [(row["step"], row["eval_rouge_sum"]) for row in rows] == [(2, 14.0)]


@pytest.mark.parametrize(
    ("scheme", "best"), [("kiwi", "eval_final_score"), ("dialogsum", "eval_final_score"), ("dcs", "eval_rouge1")]
)
def test_rouge_during_training_under_every_scheme(tiny_llama, tmp_path, scheme, best):
    """Real scoring at each evaluation under each scheme: the metrics file holds eval_<key> for every key the scheme
    declares that training computes (dcs: ROUGE-1 only, no BERTScore per evaluation), and the checkpoint is
    selected by it. Before: dcs logged Kiwi's rouge_sum, a key the scheme does not have."""
    from conftest import SAMPLE
    from dialsum.schemes import get_scheme

    if scheme != "kiwi":
        pytest.importorskip("mecab")
    config = make_config(tiny_llama, SAMPLE / "train.csv", max_steps=2, eval_steps=2, save_steps=2)
    config.data.dev = str(SAMPLE / "dev.csv")
    config.evaluation.scheme = scheme
    config.evaluation.rouge_during_training = True
    config.evaluation.rouge_subset = 2
    config.evaluation.select_best_by = best
    config.generation.max_new_tokens = 4
    run_dir = train(config, output_dir=tmp_path / "run")
    rows = [row for row in read_jsonl(run_dir / "metrics.jsonl")[0] if best in row]
    expected = {f"eval_{k}" for k in get_scheme(scheme).keys} - {"eval_bertscore", "eval_bleurt", "eval_final_score"}
    if scheme != "dcs":
        expected.add("eval_final_score")
    assert len(rows) == 1 and {k for k in rows[0] if k.startswith("eval_") and k != "eval_loss"} >= expected
    assert not {"eval_bertscore", "eval_bleurt"} & rows[0].keys()
    if scheme == "dcs":
        assert "eval_rouge_sum" not in rows[0]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["best_metric"] == best


def test_full_fine_tuning_under_bf16_updates_every_weight(tiny_llama, real_dev_path, tmp_path):
    """The preset (model.dtype auto) with training.bf16=true: fp32 master weights under bf16 autocast, so 10 steps at
    lr 2e-5 change (nearly) every weight, norms included; bf16 weights would change ~25% and no norm weight."""
    from safetensors.torch import load_file

    from dialsum.config import load_config

    root = ROOT
    config = load_config(
        root / "configs" / "llama-3.2-korean-3b.yaml",
        [
            f"model.name_or_path={tiny_llama}",
            f"data.train={real_dev_path}",
            "data.dev=null",
            "data.test=null",
            "training.bf16=true",
            "training.max_steps=10",
            "training.per_device_train_batch_size=2",
            "training.gradient_accumulation_steps=1",
            "training.gradient_checkpointing=false",
            "training.warmup_ratio=0",
            "training.max_length=512",
            "training.save_steps=100",
            "logging.steps=5",
        ],
    )
    assert config.model.dtype == "auto" and config.training.learning_rate == 2e-5 and not config.lora.enabled
    run_dir = train(config, output_dir=tmp_path / "run")
    before = load_file(tiny_llama / "model.safetensors")
    after = load_file(run_dir / "model" / "model.safetensors")
    changed = sum(int((before[k] != after[k]).sum()) for k in after)
    assert changed / sum(after[k].numel() for k in after) >= 0.99
    norms = [k for k in after if "norm" in k]
    assert len(norms) == 5
    for k in norms:  # every norm tensor moved; an element whose Adam steps cancel exactly may stay (1 of 64 seen)
        assert float((before[k] != after[k]).float().mean()) >= 0.95, k
    summary = json.loads((run_dir / "summary.json").read_text())
    env = json.loads((run_dir / "env.json").read_text())
    for record in (summary["precision"], env["precision"]):
        dtypes = (record["trainable_weights"], record["compute"], record["optimizer_state"])
        assert dtypes == (["float32"], "bfloat16", ["float32"])


def test_lora_under_bf16_keeps_a_bf16_base_and_fp32_adapters(tiny_llama, real_dev_path, tmp_path):
    config = make_config(tiny_llama, real_dev_path, max_steps=1, bf16=True, per_device_train_batch_size=1)
    config.lora.enabled = True
    config.lora.r = 4
    run_dir = train(config, output_dir=tmp_path / "run")
    precision = json.loads((run_dir / "summary.json").read_text())["precision"]
    assert (precision["frozen_weights"], precision["trainable_weights"], precision["compute"]) == (
        ["bfloat16"],
        ["float32"],
        "bfloat16",
    )
    assert precision["optimizer_state"] == ["float32"]


def test_failed_start_leaves_no_dead_end(tiny_llama, real_dev_path, tmp_path, capsys):
    """A bad model id, QLoRA without CUDA, and a crash in the first step (out of memory) each fail; the same command,
    fixed, then succeeds in the same --output-dir without anyone cleaning up."""
    import shutil

    from dialsum.errors import ConfigError
    from dialsum.monitor import MonitorMixin

    run_dir = tmp_path / "run"
    good = make_config(tiny_llama, real_dev_path, max_steps=1)

    no_weights = tmp_path / "no-weights"  # config and tokenizer load, the weights are missing
    no_weights.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (tiny_llama / name).is_file():
            shutil.copy(tiny_llama / name, no_weights / name)
    bad_model = make_config(no_weights, real_dev_path, max_steps=1)
    with pytest.raises(ConfigError, match="cannot load"):
        train(bad_model, output_dir=run_dir)
    assert not run_dir.exists()

    if not torch.cuda.is_available():
        qlora = make_config(tiny_llama, real_dev_path, max_steps=1)
        qlora.lora.enabled = True
        qlora.lora.load_in_4bit = True
        with pytest.raises(ConfigError, match="CUDA"):
            train(qlora, output_dir=run_dir)
        assert not run_dir.exists()

    def out_of_memory(self, model, inputs, num_items_in_batch=None):
        raise torch.OutOfMemoryError("CUDA out of memory (simulated)")

    original = MonitorMixin.training_step
    MonitorMixin.training_step = out_of_memory
    try:
        with pytest.raises(torch.OutOfMemoryError):
            train(good, output_dir=run_dir)
    finally:
        MonitorMixin.training_step = original
    assert (run_dir / "config.yaml").is_file() and not (run_dir / "model").exists()
    with pytest.raises(RunDirError, match="run the same command without --resume"):
        train(good, output_dir=run_dir, resume=True)
    capsys.readouterr()
    train(good, output_dir=run_dir)
    assert "starting afresh" in capsys.readouterr().err
    assert (run_dir / "model" / "model.safetensors").is_file()
    # A finished run is never reused.
    with pytest.raises(RunDirError, match="already exists"):
        train(good, output_dir=run_dir)


def test_resume_applies_safe_overrides_and_keeps_the_first_start(tiny_llama, real_dev_path, tmp_path, capsys):
    """Mutation caught (issue 19): the resume comparing the given prompt.topic=auto with the saved, resolved
    value warns that an unchanged config 'differs at prompt.topic'."""
    from dialsum.errors import ConfigError

    config = make_config(tiny_llama, real_dev_path, max_steps=2, save_steps=2)
    run_dir = train(config, output_dir=tmp_path / "run")
    first = json.loads((run_dir / "env.json").read_text())
    with pytest.raises(ConfigError, match=r"--set training\.learning_rate: cannot change on --resume"):
        train(config, output_dir=run_dir, resume=True, overrides=["training.learning_rate=1"])
    with pytest.raises(RunDirError, match="already finished at step 2"):  # transformers would train a step 3
        train(config, output_dir=run_dir, resume=True)
    capsys.readouterr()
    assert config.prompt.topic == "auto"
    train(config, output_dir=run_dir, resume=True, overrides=["training.max_steps=4", "logging.steps=2"])
    assert "differs at" not in capsys.readouterr().err
    steps = [row["step"] for row in read_jsonl(run_dir / "metrics.jsonl")[0] if "loss" in row]
    assert steps == [1, 2, 4]  # logging.steps=2 from the resume on
    assert json.loads((run_dir / "summary.json").read_text())["steps"] == 4
    from dialsum.config import load_config

    saved = load_config(run_dir / "config.yaml")
    assert (saved.training.max_steps, saved.logging.steps) == (4, 2)
    env = json.loads((run_dir / "env.json").read_text())
    assert env["started"] == first["started"] and env["command"] == first["command"]
    assert [(r["step"], r["overrides"]) for r in env["resumes"]] == [(2, ["training.max_steps=4", "logging.steps=2"])]


def scheduled_rates(config, tmp_path: Path, steps: int, planned: int = 10) -> list[float]:
    """The learning rate of each of the first `steps` optimizer steps of a run planned for `planned` steps."""
    tokenizer, examples = encoded(config, 8)
    model = load_model(config.model.name_or_path, config)
    trainer = build_trainer(config, model, tokenizer, examples, [], tmp_path / "run")
    trainer.create_optimizer()
    scheduler = trainer.create_scheduler(num_training_steps=planned)
    rates = []
    for _ in range(steps):
        rates.append(scheduler.get_last_lr()[0])
        trainer.optimizer.step()
        scheduler.step()
    return rates


def test_warmup_ratio_one_warms_up_over_every_step(tiny_llama, real_dev_path, tmp_path):
    config = make_config(tiny_llama, real_dev_path, warmup_ratio=1.0, lr_scheduler_type="linear", learning_rate=1e-3)
    assert scheduled_rates(config, tmp_path, steps=10) == pytest.approx([1e-3 * k / 10 for k in range(10)])


def test_warmup_steps_count_steps_not_a_ratio(tiny_llama, real_dev_path, tmp_path):
    """training.warmup_steps (the Korean_DCS baseline's 20) warms up over exactly that many optimizer steps."""
    config = make_config(tiny_llama, real_dev_path, warmup_ratio=None, warmup_steps=3, lr_scheduler_type="linear")
    assert scheduled_rates(config, tmp_path, steps=4) == pytest.approx([0, 1e-3 / 3, 2e-3 / 3, 1e-3])


def test_accelerate_launch_ddp_with_dev_rouge(tiny_llama, real_dev_path, tmp_path):
    """`accelerate launch --config_file configs/accelerate/ddp.yaml` with 2 CPU processes (gloo): dev ROUGE is logged
    once per evaluation, the best checkpoint is selected on every process, and model/ loads for predict."""
    import socket

    import yaml

    config = make_config(
        tiny_llama, real_dev_path, max_steps=4, per_device_train_batch_size=2, eval_steps=2, save_steps=2
    )
    config.data.dev = str(small_dev(real_dev_path, tmp_path))
    config.evaluation.rouge_during_training = True
    config.evaluation.rouge_subset = 4
    config.evaluation.select_best_by = "eval_rouge_sum"
    config.generation.max_new_tokens = 8
    path = tmp_path / "ddp.yaml"
    path.write_text(yaml.safe_dump(config.to_dict(), allow_unicode=True))
    run_dir = tmp_path / "run"
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    accelerate = Path(sys.executable).parent / "accelerate"
    root = ROOT
    result = subprocess.run(
        [
            str(accelerate),
            "launch",
            "--config_file",
            str(root / "configs" / "accelerate" / "ddp.yaml"),
            "--num_processes",
            "2",
            "--main_process_port",
            str(port),
            "-m",
            "dialsum.cli",
            "train",
            str(path),
            "--output-dir",
            str(run_dir),
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = read_jsonl(run_dir / "metrics.jsonl")[0]
    assert [row["step"] for row in rows if "eval_rouge_sum" in row] == [2, 4]
    assert [row["step"] for row in rows if "eval_loss" in row] == [2, 4]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["effective_batch_size"] == 4
    assert summary["best_metric"] == "eval_rouge_sum"
    from safetensors.torch import load_file

    final = load_file(run_dir / "model" / "model.safetensors")  # the checkpoint summary.json names, whichever it is
    chosen = load_file(run_dir / "checkpoints" / f"checkpoint-{summary['best_step']}" / "model.safetensors")
    assert all(torch.equal(final[k], chosen[k]) for k in chosen)
    env = json.loads((run_dir / "env.json").read_text())
    assert env["world_size"] == 2 and env["distributed"] == "MULTI_CPU"
    assert env["precision"]["compute"] == "float32"  # training.bf16=auto on a CPU; the launcher does not override it
    from dialsum.models import load_for_inference

    model, _, _ = load_for_inference(run_dir, None)
    assert sum(p.numel() for p in model.parameters()) > 0


def test_fsdp_final_save_gathers_a_full_state_dict(tmp_path):
    """FSDP cannot run on this CPU-only machine (accelerate enables it on accelerators only), so this checks the
    switch on accelerate's real plugin: checkpoints stay SHARDED_STATE_DICT, the final save_model sees FULL."""
    from types import SimpleNamespace

    from accelerate.utils import FullyShardedDataParallelPlugin

    from dialsum.train import save_final_model

    plugin = FullyShardedDataParallelPlugin(fsdp_version=2, state_dict_type="SHARDED_STATE_DICT")
    seen = []

    def save_model(path):
        seen.append((Path(path).name, str(plugin.state_dict_type), type(plugin.state_dict_config).__name__))
        Path(path).mkdir(parents=True)
        (Path(path) / "model.safetensors").write_bytes(b"weights")

    trainer = SimpleNamespace(
        is_fsdp_enabled=True,
        accelerator=SimpleNamespace(state=SimpleNamespace(fsdp_plugin=plugin), wait_for_everyone=lambda: None),
        is_world_process_zero=lambda: True,
        save_model=save_model,
    )
    tokenizer = SimpleNamespace(save_pretrained=lambda path: (Path(path) / "tokenizer.json").write_text("{}"))
    save_final_model(trainer, tokenizer, tmp_path)
    # written into the staging directory, then renamed into model/ once complete
    assert seen == [(".model.partial", "StateDictType.FULL_STATE_DICT", "FullStateDictConfig")]
    assert sorted(p.name for p in (tmp_path / "model").iterdir()) == ["model.safetensors", "tokenizer.json"]
    assert not (tmp_path / ".model.partial").exists()


def test_suspicious_but_legal_data_gets_one_warning_line_each(tmp_path):
    """Untagged dialogues, dev rows that are training rows, and eval_steps with no dev data are named, once each."""
    from dialsum.data import Dialogue, Turn
    from dialsum.train import data_warnings

    train_rows = [
        Dialogue("t1", [Turn("#Person1#", "안녕")], references=["요약"]),
        Dialogue("t2", [], preamble="태그 없음"),
    ]
    dev_rows = [Dialogue("d1", [Turn("#Person1#", "안녕")], references=["요약"])]
    config = config_from_dict({"model": {"name_or_path": "m"}, "data": {"train": "train.csv", "dev": "dev.csv"}})
    lines = data_warnings(config, train_rows, dev_rows)
    assert lines == [
        "train.csv: 1 dialogue(s) have no '#PersonN#:' turn tag and are read as one untagged text (e.g. t2)",
        "dev.csv: 1 of 1 dev dialogues are also in train.csv; dev scores and checkpoint selection are not held out",
    ]
    alone = config_from_dict(
        {"model": {"name_or_path": "m"}, "data": {"train": "t.csv"}, "training": {"eval_steps": 5}}
    )
    assert data_warnings(alone, train_rows[:1], []) == [
        "training.eval_steps is set but there is no dev data (data.dev): nothing is evaluated"
    ]
    assert data_warnings(config_from_dict({"model": {"name_or_path": "m"}}), train_rows[:1], []) == []


def test_a_training_example_whose_first_turn_cannot_fit_is_skipped_and_named(tiny_llama):
    """A 90k-character first turn leaves no turn at all: training on the summary alone would teach invention."""
    from dialsum.data import Dialogue, Turn

    config = make_config(tiny_llama, "unused.csv", max_length=1024)
    tokenizer = load_tokenizer(config.model.name_or_path, config)
    ensure_pad_token(tokenizer)
    long = Dialogue("long", [Turn("#Person1#", "가" * 90_000), Turn("#Person2#", "네")], references=["요약"])
    short = Dialogue("short", [Turn("#Person1#", "안녕하세요")], references=["인사"])
    examples, stats = encode_dialogues(tokenizer, [long, short], config)
    assert len(examples) == 1 and stats.no_turn_ids == ["long"]
    assert "1 skipped (not even the first turn fits training.max_length" in stats.describe()
