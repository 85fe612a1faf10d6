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
    assert meta == {"dialsum_examples": sum(len(r["seq_lengths"]) for r in rows),
                    "dialsum_real_tokens": sum(len(r["input_ids"]) for r in rows)}

    samples, spans = [], []
    for r, row in enumerate(rows):
        start = 0
        for length in row["seq_lengths"]:
            samples.append({"input_ids": row["input_ids"][start:start + length],
                            "labels": row["labels"][start:start + length]})
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
        logits_alone = model(input_ids=ids[r:r + 1, a:b], use_cache=False).logits[0]
        assert torch.allclose(logits_packed[r, a:b], logits_alone, atol=1e-4)
        r0, a0, b0 = spans[0]  # a sample in the other row, which holds no padding
        alone0 = model(input_ids=ids[r0:r0 + 1, a0:b0], use_cache=False).logits[0]
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

    config = make_config(tiny_llama, real_dev_path, packing=True, per_device_train_batch_size=8, max_length=1024,
                         gradient_accumulation_steps=2)
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
    config = make_config(model_path, real_dev_path, max_steps=24, packing=packing, per_device_train_batch_size=batch,
                         learning_rate=3e-3)
    run_dir = train(config, output_dir=tmp_path / "run")
    losses = train_losses(run_dir)
    assert len(losses) == 24
    assert sum(losses[-4:]) / 4 < sum(losses[:4]) / 4 - 0.5, losses
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["steps"] == 24 and summary["tokens_per_second"] > 0
    assert 0 < summary["real_token_fraction"] <= 1
    if packing:  # rows are padded to the longest row of the micro-batch; BFD fills them almost to max_length
        assert 0.9 < summary["real_token_fraction"] < 1.0
        assert summary["packing_layout"] == "rows" and summary["effective_batch_unit"] == "examples"
    assert summary["examples_per_optimizer_step"] == pytest.approx(batch, rel=0.1), summary
    assert summary["optimizer_steps_per_epoch"] >= 1
    for name in ("config.yaml", "env.json", "metrics.jsonl", "model/config.json", "model/model.safetensors"):
        assert (run_dir / name).is_file(), name
    row = read_metrics(run_dir / "metrics.jsonl")[1]
    assert {"step", "epoch", "loss", "grad_norm", "learning_rate", "tokens_per_second", "real_token_fraction"} <= row.keys()


def test_grad_norm_spikes_are_logged(tiny_llama, real_dev_path, tmp_path):
    config = make_config(tiny_llama, real_dev_path, max_steps=3, grad_norm_threshold=1e-6)
    run_dir = train(config, output_dir=tmp_path / "run")
    spikes = json.loads((run_dir / "summary.json").read_text())["grad_norm_spikes"]
    assert [step for step, _ in spikes] == [1, 2, 3]


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
    config = make_config(tiny_llama, small, packing=True, per_device_train_batch_size=4, max_length=1024,
                         max_steps=10, save_steps=4, save_total_limit=None)
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


def test_qlora_without_cuda_is_one_clear_error(tiny_llama, real_dev_path, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    config = make_config(tiny_llama, real_dev_path)
    config.lora.enabled = True
    config.lora.load_in_4bit = True
    from dialsum.errors import ConfigError

    with pytest.raises(ConfigError, match="CUDA"):
        train(config, output_dir=tmp_path / "q")


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
