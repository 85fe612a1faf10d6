"""Typed config: baseline defaults, presets, typed overrides, one-line errors."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from dialsum.config import DEFAULT_SYSTEM_PROMPT, config_from_dict, load_config
from dialsum.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def test_defaults_follow_the_baseline():
    config = config_from_dict({"model": {"name_or_path": "x"}})
    t = config.training
    assert (t.learning_rate, t.lr_scheduler_type, t.weight_decay, t.warmup_ratio) == (2e-5, "cosine", 0.1, 0.1)
    assert t.per_device_train_batch_size * t.gradient_accumulation_steps == 64
    assert t.gradient_checkpointing is True
    assert config.prompt.system == DEFAULT_SYSTEM_PROMPT
    assert config.prompt.question == "위 {topic} 주제에 대한 대화를 요약해주세요."


@pytest.mark.parametrize("preset", sorted(p.name for p in (ROOT / "configs").glob("*.yaml")))
def test_presets_validate(preset):
    config = load_config(ROOT / "configs" / preset)
    assert config.model.name_or_path
    if preset == "kobart.yaml":
        assert config.model.kind == "seq2seq"


def test_overrides_are_typed_by_the_schema():
    config = load_config(ROOT / "configs" / "demo.yaml", ["training.learning_rate=1e-5", "training.packing=false", "lora.target_modules=[q_proj,v_proj]"])
    assert config.training.learning_rate == 1e-5 and isinstance(config.training.learning_rate, float)
    assert config.training.packing is False
    assert config.lora.target_modules == ["q_proj", "v_proj"]


def test_unknown_key_names_the_nearest_valid_key():
    with pytest.raises(ConfigError, match=r"training\.learning_rat.*did you mean 'training\.learning_rate'"):
        load_config(ROOT / "configs" / "demo.yaml", ["training.learning_rat=1e-5"])


def test_unknown_key_in_yaml(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  name_or_path: x\ntraining:\n  warmup_ration: 0.1\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"training\.warmup_ration.*training\.warmup_ratio"):
        load_config(path)


def test_wrong_type_names_the_key():
    with pytest.raises(ConfigError, match=r"training\.per_device_train_batch_size"):
        load_config(ROOT / "configs" / "demo.yaml", ["training.per_device_train_batch_size=eight"])


def test_cli_config_error_is_one_line_exit_2(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "dialsum.cli", "inspect", str(ROOT / "configs" / "demo.yaml"), "--set", "training.lr=1"],
        capture_output=True, text=True, cwd=ROOT,
    )
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in result.stderr
    expected = r"error: --set training\.lr: unknown config key 'training\.lr' \(did you mean '[\w.]+'\?\)$"
    assert re.match(expected, lines[0]), lines[0]


def test_cli_help_lists_every_command():
    result = subprocess.run([sys.executable, "-m", "dialsum.cli", "--help"], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0
    # the first word of each row in the Commands box (a substring test passes for 'run' inside 'a run directory')
    box = result.stdout.split("Commands", 1)[1]
    listed = re.findall(r"^│ ([a-z][a-z-]*) {2,}", box, flags=re.MULTILINE)
    assert listed == ["train", "run", "predict", "evaluate", "screen", "compare", "inspect", "make-tiny-model"]


@pytest.mark.parametrize("backend", ["wandb", "tensorboard"])
def test_missing_tracker_is_one_clear_error(backend, tmp_path, monkeypatch):
    from dialsum.train import training_arguments

    monkeypatch.setitem(sys.modules, backend, None)  # absent, also where it is installed: the import fails
    config = load_config(ROOT / "configs" / "demo.yaml", [f"logging.report_to=[{backend}]"])
    with pytest.raises(ConfigError, match=rf"{backend}.*pip install 'dialsum\[{backend}\]'"):
        training_arguments(config, tmp_path, has_dev=False, seq2seq=False)


@pytest.mark.parametrize("backend", ["wandb", "tensorboard"])
def test_installed_tracker_is_reported_to(backend, tmp_path):
    import importlib.util

    if importlib.util.find_spec(backend) is None:
        pytest.skip(f"{backend} is not installed (pip install 'dialsum[{backend}]')")
    from dialsum.train import training_arguments

    config = load_config(ROOT / "configs" / "demo.yaml", [f"logging.report_to=[{backend}]"])
    assert training_arguments(config, tmp_path, has_dev=False, seq2seq=False).report_to == [backend]
