"""Training engine: leak-free packing, loss goes down, resume, LoRA adapters, seq2seq, 2 processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dialsum.config import config_from_dict
from dialsum.data import load_dialogues
from dialsum.encode import encode_dialogues, ensure_pad_token
from dialsum.errors import RunDirError
from dialsum.models import load_model, load_tokenizer
from dialsum.train import build_trainer, read_metrics, train

pytestmark = pytest.mark.slow


def make_config(model_path, train_path, **training):
    kind = "seq2seq" if "bart" in str(model_path) else "causal"
    settings = dict(
        max_steps=4, per_device_train_batch_size=4, gradient_accumulation_steps=1, learning_rate=1e-3,
        gradient_checkpointing=False, max_length=512, packing=False, warmup_ratio=0.0, save_steps=100,
    )
    settings.update(training)
    return config_from_dict({
        "model": {"name_or_path": str(model_path), "kind": kind},
        "data": {"train": str(train_path)},
        "training": settings,
        "logging": {"steps": 1},
    })


def encoded(config, n):
    tokenizer = load_tokenizer(config.model.name_or_path, config)
    ensure_pad_token(tokenizer)
    dialogues = load_dialogues(config.data.train)[:n]
    examples, _ = encode_dialogues(tokenizer, dialogues, config)
    return tokenizer, examples


def train_losses(run_dir: Path) -> list[float]:
    return [row["loss"] for row in read_metrics(run_dir / "metrics.jsonl") if "loss" in row]


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_batch_equals_padded_batch(tiny_llama, real_dev_path, tmp_path, attn):
    """The loss of a packed batch equals the loss of the same examples padded, and a sample's logits
    inside a pack equal its logits alone: packed samples never attend to each other."""
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    config = make_config(tiny_llama, real_dev_path, packing=True, per_device_train_batch_size=2, max_length=1024)
    config.model.attn_implementation = attn
    tokenizer, examples = encoded(config, 24)
    model = load_model(config.model.name_or_path, config)
    model.resize_token_embeddings(len(tokenizer))
    trainer = build_trainer(config, model, tokenizer, examples, [], tmp_path / "run")
    model = trainer.model.eval()
    packed = next(iter(trainer.get_train_dataloader()))
    assert "attention_mask" not in packed and packed["input_ids"].shape[0] == 1
    starts = (packed["position_ids"][0] == 0).nonzero().flatten().tolist() + [packed["input_ids"].shape[1]]
    assert len(starts) - 1 >= 3, "the pack should hold several samples"
    samples = [
        {"input_ids": packed["input_ids"][0, a:b].tolist(), "labels": packed["labels"][0, a:b].tolist()}
        for a, b in zip(starts, starts[1:])
    ]
    padded = DataCollatorForLanguageModeling(pad_token_id=tokenizer.pad_token_id)(samples)
    with torch.no_grad():
        loss_packed = trainer.compute_loss(model, dict(packed)).item()
        loss_padded = trainer.compute_loss(model, dict(padded)).item()
        assert abs(loss_packed - loss_padded) < 1e-4, (loss_packed, loss_padded)

        inputs = {k: v for k, v in packed.items() if k != "labels"}
        logits_packed = model(**inputs, use_cache=False).logits[0]
        a, b = starts[2], starts[3]
        logits_alone = model(input_ids=packed["input_ids"][:, a:b], use_cache=False).logits[0]
        assert torch.allclose(logits_packed[a:b], logits_alone, atol=1e-4)
        # The control: the same pack with an attention mask (or a KV cache) leaks across samples.
        leaky = model(input_ids=inputs["input_ids"], position_ids=inputs["position_ids"],
                      attention_mask=torch.ones_like(inputs["input_ids"]), use_cache=False).logits[0]
        assert not torch.allclose(leaky[a:b], logits_alone, atol=1e-4)


@pytest.mark.parametrize("arch,packing,batch", [("llama", True, 2), ("qwen2", False, 4), ("bart", False, 8)])
def test_loss_goes_down(arch, packing, batch, request, real_dev_path, tmp_path):
    model_path = request.getfixturevalue(f"tiny_{arch}")
    config = make_config(model_path, real_dev_path, max_steps=24, packing=packing, per_device_train_batch_size=batch,
                         learning_rate=3e-3)
    run_dir = train(config, output_dir=tmp_path / "run")
    losses = train_losses(run_dir)
    assert len(losses) == 24
    assert sum(losses[-4:]) / 4 < sum(losses[:4]) / 4 - 0.5, losses
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["steps"] == 24 and summary["tokens_per_second"] > 0
    # padding-free packing has no padding; padded batches of dialogues of differing lengths do (the counter itself
    # is tested on batches of known padding in test_token_counts.py)
    assert summary["real_token_fraction"] == 1.0 if packing else 0 < summary["real_token_fraction"] < 1
    for name in ("config.yaml", "env.json", "metrics.jsonl", "model/config.json", "model/model.safetensors"):
        assert (run_dir / name).is_file(), name
    row = read_metrics(run_dir / "metrics.jsonl")[1]
    assert {"step", "epoch", "loss", "grad_norm", "learning_rate", "tokens_per_second", "real_token_fraction"} <= row.keys()


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
        config = make_config(tiny_llama, real_dev_path, max_steps=3, packing=True, per_device_train_batch_size=2,
                             gradient_checkpointing=checkpointing)
        runs[checkpointing] = train(config, output_dir=tmp_path / f"gc-{checkpointing}")
        if checkpointing:
            assert calls and set(calls) == {False}, calls  # every layer recomputed, never the reentrant variant
        else:
            assert calls == []
    assert train_losses(runs[True]) == pytest.approx(train_losses(runs[False]), abs=1e-5)
    from safetensors.torch import load_file

    a, b = (load_file(runs[flag] / "model" / "model.safetensors") for flag in (False, True))
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)


def test_grad_norm_spikes_are_logged(tiny_llama, real_dev_path, tmp_path):
    """Only steps above the threshold are spikes, filed under their own step. At this learning rate step 2's norm
    jumps (observed 1.00, 7.98, 0.85), so a threshold of 3 splits the run into spike and not-spike steps."""
    config = make_config(tiny_llama, real_dev_path, max_steps=3, learning_rate=3e-2, grad_norm_threshold=3.0)
    run_dir = train(config, output_dir=tmp_path / "run")
    norms = {row["step"]: row["grad_norm"] for row in read_metrics(run_dir / "metrics.jsonl") if "grad_norm" in row}
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
    steps = [row["step"] for row in read_metrics(interrupted / "metrics.jsonl") if "loss" in row]
    assert steps == [1, 2, 3, 4, 5, 6]
    assert train_losses(interrupted) == pytest.approx(train_losses(full), abs=1e-4)
    from safetensors.torch import load_file

    a = load_file(full / "model" / "model.safetensors")
    b = load_file(interrupted / "model" / "model.safetensors")
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)


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
        [str(torchrun), "--nproc_per_node", "2", "--master_addr", "127.0.0.1", "--master_port", str(port), "-m", "dialsum.cli", "train", str(path), "--output-dir", str(run_dir)],
        capture_output=True, text=True, env=env, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["world_size"] == 2
    assert summary["effective_batch_size"] == 2 * 1 * 2
    assert summary["steps"] == 3


def test_rouge_during_training_selects_the_best_checkpoint(tiny_llama, real_dev_path, tmp_path):
    """Generation-based dev ROUGE at each evaluation lands in metrics.jsonl and picks the best checkpoint."""
    config = make_config(tiny_llama, real_dev_path, max_steps=4, eval_steps=2, save_steps=2)
    lines = real_dev_path.read_text(encoding="utf-8")
    import csv
    import io

    rows = list(csv.DictReader(io.StringIO(lines)))[:12]
    dev = tmp_path / "dev.csv"
    with dev.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0].keys()))
        writer.writeheader()
        writer.writerows(rows)
    config.data.dev = str(dev)
    config.evaluation.rouge_during_training = True
    config.evaluation.rouge_subset = 4
    config.evaluation.select_best_by = "eval_rouge_sum"
    config.generation.max_new_tokens = 8
    run_dir = train(config, output_dir=tmp_path / "run")
    rouge_rows = [row for row in read_metrics(run_dir / "metrics.jsonl") if "eval_rouge_sum" in row]
    assert [row["step"] for row in rouge_rows] == [2, 4]
    assert all({"eval_rouge1", "eval_rouge2", "eval_rougeL"} <= row.keys() for row in rouge_rows)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["best_metric"] == "eval_rouge_sum" and summary["best_step"] in (2, 4)
