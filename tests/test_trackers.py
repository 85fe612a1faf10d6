"""The experiment trackers for real, offline: what W&B (WANDB_MODE=offline) and TensorBoard wrote during a tiny
run holds its loss, grad norm, learning rate, eval metrics and grad-norm spikes under readable names, inside the
run directory."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from conftest import SAMPLE
from dialsum.config import config_from_dict

EXPECTED = {"train/loss", "train/grad_norm", "train/learning_rate", "train/grad_norm_spikes", "eval/loss"}


def read_wandb_history(path: Path) -> list[dict]:
    """The history rows of an offline run's .wandb file: W&B's record log (a ':W&B' header, then LevelDB-log
    blocks of 32 KiB holding protobuf Records), read with W&B's own protobuf classes."""
    import json

    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B", "not a W&B transaction log"
    block, offset, pending, rows = 32768, 7, b"", []
    while offset + 7 <= len(data):
        if block - offset % block < 7:  # a block's tail too short for a header is padding
            offset += block - offset % block
            continue
        _, length, kind = struct.unpack("<IHB", data[offset : offset + 7])
        payload = data[offset + 7 : offset + 7 + length]
        offset += 7 + length
        if kind == 0 and length == 0:
            continue
        pending = payload if kind in (1, 2) else pending + payload
        if kind in (1, 4):  # FULL or LAST: one Record
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            if record.WhichOneof("record_type") == "history":
                rows.append(
                    {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item}
                )
    return rows


@pytest.mark.slow
def test_wandb_offline_and_tensorboard_record_the_run_under_readable_names(tiny_llama, tmp_path, monkeypatch, capfd):
    """Mutations caught: the spikes only in grad_norm_spikes.jsonl (no train/grad_norm_spikes in either tracker);
    TensorBoard's default logging_dir (checkpoints/runs/<date>, outside run_dir/tensorboard, caught); W&B's run
    left open (its last rows unwritten when training returns); the console printing each log as a dict."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from dialsum.train import train

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("WANDB_DISABLED", raising=False)
    monkeypatch.delenv("WANDB_DIR", raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    config = config_from_dict(
        {
            "model": {"name_or_path": str(tiny_llama)},
            "data": {"train": str(SAMPLE / "train.csv"), "dev": str(SAMPLE / "dev.csv")},
            "training": {
                "max_steps": 4,
                "per_device_train_batch_size": 4,
                "gradient_accumulation_steps": 1,
                "learning_rate": 1e-3,
                "max_length": 512,
                "packing": False,
                "gradient_checkpointing": False,
                "eval_steps": 2,
                "save_steps": 2,
                "grad_norm_threshold": 0.001,  # every step is a spike
            },
            "logging": {"steps": 1, "report_to": ["wandb", "tensorboard"]},
        }
    )
    run_dir = train(config, output_dir=tmp_path / "run")
    console = "".join(capfd.readouterr())
    assert "{'loss'" not in console and "step 4/4 · loss " in console and "eval at step 2: loss " in console
    assert "missing keys" not in console  # the tied lm_head.weight, when the best checkpoint is loaded

    events = list((run_dir / "tensorboard").rglob("events.out.tfevents.*"))
    assert events, f"no TensorBoard event file under {run_dir / 'tensorboard'}"
    assert not (run_dir / "checkpoints" / "runs").exists()
    accumulator = EventAccumulator(str(events[0].parent))
    accumulator.Reload()
    scalars = set(accumulator.Tags()["scalars"])
    assert EXPECTED <= scalars, EXPECTED - scalars
    assert [e.step for e in accumulator.Scalars("eval/loss")] == [2, 4]
    assert all(e.value >= 1 for e in accumulator.Scalars("train/grad_norm_spikes"))
    assert [e.step for e in accumulator.Scalars("train/loss")] == [1, 2, 3, 4]

    logs = list((run_dir / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(logs) == 1, f"W&B's offline run not under {run_dir / 'wandb'}"
    rows = read_wandb_history(logs[0])
    keys = set().union(*rows)
    assert EXPECTED <= keys, EXPECTED - keys
    losses = [row["train/loss"] for row in rows if "train/loss" in row]
    tb_losses = [e.value for e in accumulator.Scalars("train/loss")]
    assert losses == pytest.approx(tb_losses, rel=1e-5)
    assert sum(row.get("train/grad_norm_spikes", 0) for row in rows) == 4  # one per step


def test_a_log_is_one_compact_line():
    from types import SimpleNamespace

    from dialsum.monitor import compact_line

    state = SimpleNamespace(global_step=20, max_steps=100)
    logs = {"loss": 2.31456, "grad_norm": 1.25, "learning_rate": 2e-5, "tokens_per_second": 1234.5, "epoch": 0.2}
    assert compact_line({**logs, "grad_norm_spikes": 2}, state) == (
        "step 20/100 · loss 2.315 · grad norm 1.25 · lr 2.00e-05 · 1,234 tokens/s · 2 grad-norm spike(s)"
    )
    evaluation = {"eval_loss": 1.5, "eval_runtime": 3.2, "eval_samples_per_second": 9.0, "eval_rouge_sum": 41.234}
    evaluation["eval_num_tokens"] = 67580.0
    assert compact_line(evaluation, state) == "eval at step 20: loss 1.5, rouge_sum 41.23"
    assert compact_line({"train_runtime": 10.0, "train_loss": 2.0}, state) is None  # summary.json holds it
