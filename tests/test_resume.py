"""Saves that survive a kill: every way a save can be cut short leaves a run that `--resume` finishes, with the
result of an uninterrupted run, and what the kill left is moved aside, never deleted."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import ROOT
from dialsum.errors import RunDirError
from dialsum.rundir import checkpoint_problem, model_problem
from dialsum.train import train
from test_train import make_config, train_losses

pytestmark = pytest.mark.slow


def same_weights(a: Path, b: Path) -> bool:
    x, y = load_file(a / "model" / "model.safetensors"), load_file(b / "model" / "model.safetensors")
    return x.keys() == y.keys() and all(torch.allclose(x[k], y[k], atol=1e-5) for k in x)


@pytest.fixture(scope="module")
def config(tiny_llama, real_dev_path):
    return make_config(tiny_llama, real_dev_path, max_steps=4, save_steps=2, save_total_limit=None)


@pytest.fixture(scope="module")
def uninterrupted(config, tmp_path_factory):
    return train(config, output_dir=tmp_path_factory.mktemp("full") / "run")


@pytest.fixture
def finished(uninterrupted, tmp_path):
    """A copy of a finished run, to be cut short in one way or another."""
    return Path(shutil.copytree(uninterrupted, tmp_path / "run"))


def files_and_bytes(run_dir: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run_dir)): p.read_bytes() for p in sorted(run_dir.rglob("*")) if p.is_file()}


def test_a_checkpoint_cut_short_is_skipped_moved_aside_and_the_resume_equals_the_uninterrupted_run(
    config, uninterrupted, finished, capsys
):
    # A kill while checkpoint-4 was written: weights there, trainer_state.json (written last) not yet; no model/.
    (finished / "checkpoints" / "checkpoint-4" / "trainer_state.json").unlink()
    shutil.rmtree(finished / "model")
    assert checkpoint_problem(finished / "checkpoints" / "checkpoint-4") == "no trainer_state.json"
    train(config, output_dir=finished, resume=True)
    err = capsys.readouterr().err
    assert "checkpoint-4 is incomplete (no trainer_state.json" in err and "moved it aside" in err
    kept = [p.name for p in (finished / "checkpoints").iterdir() if p.name.startswith("incomplete-checkpoint-4-")]
    assert len(kept) == 1  # kept, not deleted
    assert train_losses(finished) == pytest.approx(train_losses(uninterrupted), abs=1e-4)
    assert same_weights(finished, uninterrupted)


def test_a_final_save_cut_short_is_finished_from_the_checkpoint_without_training(
    config, uninterrupted, finished, capsys
):
    # A kill during the final save of model/ (before saves were atomic): a 0-byte config.json.
    (finished / "model" / "config.json").write_bytes(b"")
    assert model_problem(finished / "model") == "config.json is empty or cut short"
    losses = train_losses(finished)
    train(config, output_dir=finished, resume=True)
    err = capsys.readouterr().err
    assert "training finished at step 4 but model/ is config.json is empty" in err
    assert train_losses(finished) == losses  # no step trained again
    assert model_problem(finished / "model") is None
    assert same_weights(finished, uninterrupted)
    assert any(p.name.startswith("incomplete-model-") for p in finished.iterdir())
    with pytest.raises(RunDirError, match="already finished at step 4"):
        train(config, output_dir=finished, resume=True)


def test_an_optimizer_state_holding_code_is_refused_before_anything_changes(config, finished):
    class Code:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    shutil.rmtree(finished / "model")  # cut after step 2: the resume would load checkpoint-2's optimizer state
    shutil.rmtree(finished / "checkpoints" / "checkpoint-4")
    torch.save({"state": Code()}, finished / "checkpoints" / "checkpoint-2" / "optimizer.pt")
    before = files_and_bytes(finished)
    with pytest.raises(RunDirError, match=r"checkpoint-2/optimizer\.pt: refused to load .*weights_only=True"):
        train(config, output_dir=finished, resume=True)
    assert files_and_bytes(finished) == before


def test_ctrl_c_says_interrupted_and_the_command_it_prints_finishes_the_run(tiny_llama, real_dev_path, tmp_path):
    import yaml

    config = make_config(tiny_llama, real_dev_path, max_steps=400, save_steps=2)
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config.to_dict()), encoding="utf-8")
    run_dir = tmp_path / "run"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT / "src")}
    command = [sys.executable, "-m", "dialsum.cli", "train", str(path), "--output-dir", str(run_dir)]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while not (run_dir / "checkpoints" / "checkpoint-2" / "trainer_state.json").is_file():
        assert process.poll() is None and time.time() < deadline, process.communicate()
        time.sleep(0.2)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    line = [x for x in err.splitlines() if x.startswith("interrupted:")]  # its own line, whatever tqdm left
    assert len(line) == 1 and "Traceback" not in err, err
    resume = line[0].split("continue it with: ", 1)[1]
    assert resume == f"dialsum train {run_dir / 'config.yaml'} --resume --output-dir {run_dir}"
    done = subprocess.run(
        [sys.executable, "-m", "dialsum.cli", *resume.split()[1:], "--set", "training.max_steps=4"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert model_problem(run_dir / "model") is None


# ---------------------------------------------------------------- `dialsum run` finishes from its first unfinished step


def demo_config(*overrides):
    from dialsum.config import load_config

    return load_config(
        ROOT / "configs" / "demo.yaml",
        ["training.max_steps=4", "training.eval_steps=2", "training.save_steps=2", *overrides],
    )


def test_a_run_that_fails_after_training_finishes_with_resume_without_retraining(tmp_path, monkeypatch):
    import dialsum.run
    from dialsum.run import run

    real = dialsum.run.predict_split

    def out_of_memory_on_test(predictor, dialogues, config, split):
        if split == "test":
            raise RuntimeError("CUDA out of memory (simulated, while predicting test)")
        return real(predictor, dialogues, config, split=split)

    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(dialsum.run, "predict_split", out_of_memory_on_test)
    run_dir = tmp_path / "run"
    with pytest.raises(RuntimeError, match="out of memory"):
        run(demo_config(), output_dir=run_dir)
    assert (run_dir / "dev_scores.json").is_file() and not (run_dir / "submission.csv").exists()
    trained = {name: (run_dir / name).stat().st_mtime_ns for name in ("metrics.jsonl", "model/model.safetensors")}
    dev = (run_dir / "dev_predictions.csv").stat().st_mtime_ns

    calls = []
    monkeypatch.setattr(dialsum.run, "predict_split", lambda *a, **k: calls.append(k["split"]) or real(*a, **k))
    run(demo_config(), output_dir=run_dir, resume=True)
    assert calls == ["test"]  # dev is not predicted again, training not repeated
    assert {name: (run_dir / name).stat().st_mtime_ns for name in trained} == trained
    assert (run_dir / "dev_predictions.csv").stat().st_mtime_ns == dev
    assert (run_dir / "submission.csv").is_file() and (run_dir / "report.md").is_file()
    run(demo_config(), output_dir=run_dir, resume=True)  # everything done: only the reports are rewritten
    assert calls == ["test"]


@pytest.mark.parametrize(
    "override, message",
    [
        ("evaluation.scheme=dialogsum", "scheme 'dialogsum' needs Mecab"),
        ("data.test=missing/test.csv", "missing/test.csv"),
    ],
)
def test_run_checks_what_it_needs_after_training_before_training(tmp_path, monkeypatch, override, message):
    from dialsum.errors import DialsumError
    from dialsum.run import run

    monkeypatch.chdir(ROOT)
    monkeypatch.setitem(sys.modules, "mecab", None)  # as on a machine without python-mecab-ko
    with pytest.raises(DialsumError, match=message):
        run(demo_config(override), output_dir=tmp_path / "run")
    assert not (tmp_path / "run").exists()
