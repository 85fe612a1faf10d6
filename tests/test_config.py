"""Typed config: baseline defaults, presets, typed overrides, one-line errors."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from conftest import ROOT
from dialsum.config import DEFAULT_SYSTEM_PROMPT, config_from_dict, load_config
from dialsum.errors import ConfigError


def test_defaults_follow_the_baseline():
    config = config_from_dict({"model": {"name_or_path": "x"}})
    t = config.training
    assert (t.learning_rate, t.lr_scheduler_type, t.weight_decay) == (2e-5, "cosine", 0.1)
    assert (t.warmup_ratio, t.warmup_steps, t.effective_warmup_ratio()) == (None, None, 0.1)
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
    config = load_config(
        ROOT / "configs" / "demo.yaml",
        ["training.learning_rate=1e-5", "training.packing=false", "lora.target_modules=[q_proj,v_proj]"],
    )
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


def test_a_bad_set_value_is_blamed_on_the_set_and_a_union_names_its_field(tmp_path):
    """Mutations caught (issue 19): a --set value error reported as 'configs/demo.yaml: ...'; a union's branch
    in the key ('generation.max_new_tokens.int') with no word of 'auto'."""
    demo = ROOT / "configs" / "demo.yaml"
    with pytest.raises(ConfigError) as error:
        load_config(demo, ["generation.max_new_tokens=auto2"])
    message = str(error.value)
    assert message.startswith("--set generation.max_new_tokens: ") and "demo.yaml" not in message
    assert ".int" not in message and "'auto'" in message and "integer" in message and "'auto2'" in message
    with pytest.raises(ConfigError, match=r"^--set training\.learning_rate: .*number.*'abc'"):
        load_config(demo, ["training.learning_rate=abc"])
    bad = tmp_path / "bad.yaml"  # a value in the file is still blamed on the file
    bad.write_text(demo.read_text().replace("max_new_tokens: 48", "max_new_tokens: auto2"))
    assert "auto2" in bad.read_text()
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(bad))}: config key 'generation\.max_new_tokens': "):
        load_config(bad, ["training.learning_rate=1e-4"])


def test_cli_config_error_is_one_line_exit_2(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "dialsum.cli", "inspect", str(ROOT / "configs" / "demo.yaml"), "--set", "training.lr=1"],
        capture_output=True,
        text=True,
        cwd=ROOT,
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
    assert listed == [
        "train",
        "plan",
        "run",
        "predict",
        "tune",
        "evaluate",
        "screen",
        "compare",
        "inspect",
        "config-keys",
        "augment",
        "kfold",
        "ensemble",
        "export",
        "serve",
        "make-tiny-model",
    ]


@pytest.mark.parametrize("backend", ["wandb", "tensorboard"])
def test_missing_tracker_is_one_clear_error(backend, tmp_path, monkeypatch):
    from dialsum.trainer import training_arguments

    monkeypatch.setitem(sys.modules, backend, None)  # absent, also where it is installed: the import fails
    config = load_config(ROOT / "configs" / "demo.yaml", [f"logging.report_to=[{backend}]"])
    with pytest.raises(ConfigError, match=rf"{backend}.*pip install 'dialsum\[{backend}\]'"):
        training_arguments(config, tmp_path, has_dev=False, seq2seq=False)


@pytest.mark.parametrize("backend", ["wandb", "tensorboard"])
def test_installed_tracker_is_reported_to(backend, tmp_path):
    """The dev extra installs both trackers, so this never skips (what they write: tests/test_trackers.py)."""
    import importlib

    importlib.import_module(backend)
    from dialsum.trainer import training_arguments

    config = load_config(ROOT / "configs" / "demo.yaml", [f"logging.report_to=[{backend}]"])
    assert training_arguments(config, tmp_path, has_dev=False, seq2seq=False).report_to == [backend]


def test_bf16_accepts_yaml_booleans():
    config = load_config(ROOT / "configs" / "demo.yaml", ["training.bf16=true"])
    assert config.training.bf16 == "true"
    assert load_config(ROOT / "configs" / "demo.yaml", ["training.bf16=false"]).training.bf16 == "false"
    with pytest.raises(ConfigError, match=r"training\.bf16"):
        load_config(ROOT / "configs" / "demo.yaml", ["training.bf16=maybe"])


def test_scheduler_typo_suggests_the_nearest_name():
    with pytest.raises(ConfigError, match=r"training\.lr_scheduler_type.*did you mean 'cosine'\?"):
        load_config(ROOT / "configs" / "demo.yaml", ["training.lr_scheduler_type=cosin"])


def test_every_allowed_scheduler_is_one_transformers_builds():
    import torch
    from transformers import get_scheduler

    from dialsum.config import LR_SCHEDULERS

    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    for name in LR_SCHEDULERS:
        get_scheduler(name, optimizer=optimizer, num_warmup_steps=1, num_training_steps=10)


def test_cli_scheduler_typo_is_one_line_before_anything_is_written(tmp_path):
    run_dir = tmp_path / "run"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "dialsum.cli",
            "train",
            str(ROOT / "configs" / "demo.yaml"),
            "--set",
            "training.lr_scheduler_type=cosin",
            "--output-dir",
            str(run_dir),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "did you mean 'cosine'" in lines[0], result.stderr
    assert not run_dir.exists()


def test_warmup_ratio_accepts_the_closed_interval():
    assert load_config(ROOT / "configs" / "demo.yaml", ["training.warmup_ratio=1.0"]).training.warmup_ratio == 1.0
    with pytest.raises(ConfigError, match=r"training\.warmup_ratio"):
        load_config(ROOT / "configs" / "demo.yaml", ["training.warmup_ratio=1.5"])


def test_warmup_steps_and_ratio_are_exclusive(tmp_path):
    demo = ROOT / "configs" / "demo.yaml"  # sets warmup_ratio: 0.1 explicitly
    with pytest.raises(ConfigError) as error:
        load_config(demo, ["training.warmup_steps=20"])
    message = str(error.value)
    assert "training.warmup_ratio=0.1" in message and "training.warmup_steps=20" in message
    assert "\n" not in message
    t = load_config(demo, ["training.warmup_steps=20", "training.warmup_ratio=null"]).training
    assert (t.warmup_steps, t.effective_warmup_ratio()) == (20, 0.0)
    # a run's saved config.yaml (both keys written, the ratio null) loads back
    from dialsum.config import save_config

    save_config(load_config(demo, ["training.warmup_steps=20", "training.warmup_ratio=null"]), tmp_path / "c.yaml")
    assert load_config(tmp_path / "c.yaml").training.warmup_steps == 20


def test_warmup_steps_reach_the_training_arguments(tmp_path):
    from dialsum.trainer import training_arguments

    config = load_config(ROOT / "configs" / "korean-dcs-baseline.yaml", ["model.name_or_path=x"])
    args = training_arguments(config, tmp_path, has_dev=True, seq2seq=False)
    assert args.warmup_steps == 20 and config.training.effective_warmup_ratio() == 0.0


def test_strip_whitespace_defaults_on_and_dcs_presets_turn_it_off():
    assert config_from_dict({"model": {"name_or_path": "x"}}).data.strip_whitespace is True
    for preset in ("korean-dcs-baseline.yaml", "korean-dcs-bllossom-8b.yaml"):
        assert load_config(ROOT / "configs" / preset).data.strip_whitespace is False, preset


def test_topic_separator_is_gone():
    with pytest.raises(ConfigError, match=r"unknown config key 'prompt\.topic_separator'"):
        load_config(ROOT / "configs" / "demo.yaml", ["prompt.topic_separator=/"])


@pytest.mark.parametrize("save,eval_,ok", [(50, 50, True), (None, 50, True), (100, 50, False), (100, None, False)])
def test_checkpoints_are_saved_where_the_best_is_selected(save, eval_, ok):
    overrides = [f"training.save_steps={save if save else 'null'}", f"training.eval_steps={eval_ if eval_ else 'null'}"]
    if ok:
        load_config(ROOT / "configs" / "demo.yaml", overrides)
    else:
        with pytest.raises(ConfigError, match=r"training\.save_steps=100 .*best checkpoint"):
            load_config(ROOT / "configs" / "demo.yaml", overrides)
    # without a dev set nothing is selected, so any save_steps is fine
    load_config(ROOT / "configs" / "demo.yaml", overrides + ["data.dev=null"])


def _gpu(monkeypatch, bf16: bool):
    import torch

    import dialsum.models

    monkeypatch.setattr(dialsum.models, "has_cuda", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: bf16)


@pytest.mark.parametrize("bf16_gpu", [True, False])
def test_precision_policy_on_a_gpu(monkeypatch, bf16_gpu):
    """Full fine-tuning: fp32 master weights whatever the GPU; LoRA: a half-precision frozen base on bf16 GPUs."""
    import torch

    from dialsum.models import compute_dtype, precision_warning, torch_dtype, training_weight_dtype

    _gpu(monkeypatch, bf16_gpu)
    full = load_config(ROOT / "configs" / "llama-3.2-korean-3b.yaml")
    assert training_weight_dtype(full) == torch.float32
    assert compute_dtype(full) == (torch.bfloat16 if bf16_gpu else torch.float32)
    assert torch_dtype(full) == (torch.bfloat16 if bf16_gpu else torch.float32)  # inference keeps half weights
    assert precision_warning(full) is None
    lora = load_config(ROOT / "configs" / "llama-3.2-korean-3b.yaml", ["lora.enabled=true"])
    assert training_weight_dtype(lora) == (torch.bfloat16 if bf16_gpu else torch.float32)
    explicit = load_config(ROOT / "configs" / "llama-3.2-korean-3b.yaml", ["model.dtype=bfloat16"])
    assert training_weight_dtype(explicit) == torch.bfloat16
    warning = precision_warning(explicit)
    assert "\n" not in warning and "model.dtype=bfloat16 with full fine-tuning" in warning and "round away" in warning
    assert (
        precision_warning(
            load_config(ROOT / "configs" / "llama-3.2-korean-3b.yaml", ["model.dtype=bfloat16", "lora.enabled=true"])
        )
        is None
    )


@pytest.mark.parametrize("bf16_gpu,expected", [(True, "bfloat16"), (False, "float16")])
def test_qlora_settings_follow_the_gpu(monkeypatch, bf16_gpu, expected):
    """Everything up to the bitsandbytes call, without CUDA: the 4-bit config, the compute dtype (bf16 where the GPU
    has it, fp16 otherwise), prepare_model_for_kbit_training's arguments and the LoRA targets."""
    import torch
    from transformers import BitsAndBytesConfig

    from dialsum.models import compute_dtype, kbit_training_settings, qlora_settings, training_weight_dtype
    from dialsum.trainer import peft_lora_config

    _gpu(monkeypatch, bf16_gpu)
    config = load_config(
        ROOT / "configs" / "llama-3.2-korean-3b.yaml",
        ["lora.enabled=true", "lora.load_in_4bit=true", "lora.target_modules=[q_proj,v_proj]"],
    )
    settings = qlora_settings(config)
    assert settings == {
        "load_in_4bit": True,
        "bnb_4bit_quant_type": "nf4",
        "bnb_4bit_use_double_quant": True,
        "bnb_4bit_compute_dtype": getattr(torch, expected),
    }
    bnb = BitsAndBytesConfig(**settings)
    assert bnb.load_in_4bit and bnb.bnb_4bit_compute_dtype == getattr(torch, expected)
    assert compute_dtype(config) == training_weight_dtype(config) == getattr(torch, expected)
    assert kbit_training_settings(config) == {
        "use_gradient_checkpointing": True,
        "gradient_checkpointing_kwargs": {"use_reentrant": False},
    }
    config.training.gradient_checkpointing = False
    assert kbit_training_settings(config)["use_gradient_checkpointing"] is False
    peft_config = peft_lora_config(config)
    assert (peft_config.r, peft_config.lora_alpha, set(peft_config.target_modules)) == (16, 32, {"q_proj", "v_proj"})
    assert peft_config.task_type == "CAUSAL_LM"


@pytest.mark.parametrize(
    "launcher,bf16,ok",
    [("no", "true", True), ("bf16", "true", True), ("bf16", "false", False), ("fp16", "true", False)],
)
def test_accelerate_mixed_precision_must_agree_with_the_config(monkeypatch, launcher, bf16, ok):
    """transformers lets ACCELERATE_MIXED_PRECISION (set by `accelerate launch`) win over training.bf16."""
    from dialsum.train import check_launcher_precision

    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", launcher)
    config = load_config(ROOT / "configs" / "demo.yaml", [f"training.bf16={bf16}"])
    if ok:
        check_launcher_precision(config)
    else:
        with pytest.raises(ConfigError, match=rf"mixed_precision={launcher} but training\.bf16={bf16}"):
            check_launcher_precision(config)


@pytest.mark.parametrize("name", ["ddp.yaml", "fsdp.yaml", "deepspeed_zero3.yaml"])
def test_accelerate_configs_leave_precision_to_dialsum(name):
    import yaml

    raw = yaml.safe_load((ROOT / "configs" / "accelerate" / name).read_text(encoding="utf-8"))
    assert raw["mixed_precision"] == "no"
    if name == "fsdp.yaml":  # sharded checkpoints; train.save_final_model gathers model/
        assert raw["fsdp_config"]["fsdp_state_dict_type"] == "SHARDED_STATE_DICT"


def test_every_config_field_describes_itself():
    from dialsum.config import config_fields

    rows = config_fields()
    assert len(rows) > 60 and [row["key"] for row in rows if not row["description"].strip()] == []
    by_key = {row["key"]: row for row in rows}
    assert (
        by_key["training.learning_rate"]["default"] == "2e-05" and by_key["training.learning_rate"]["type"] == "float"
    )
    assert by_key["lora.target_modules"]["type"] == "list[str] | 'all-linear'"
    assert by_key["model.name_or_path"]["default"] == "(required)"


def test_config_keys_command_prints_one_section_and_rejects_an_unknown_one():
    from typer.testing import CliRunner

    from dialsum.cli import app

    result = CliRunner().invoke(app, ["config-keys", "lora", "--markdown"])
    assert result.exit_code == 0, result.output
    keys = [line.split("`")[1] for line in result.output.splitlines()[2:]]
    assert keys == ["lora.enabled", "lora.r", "lora.alpha", "lora.dropout", "lora.target_modules", "lora.load_in_4bit"]
    bad = subprocess.run([sys.executable, "-m", "dialsum.cli", "config-keys", "nope"], capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.strip().splitlines() == [
        "error: config-keys nope: no such section; sections: augment, cleanup, data, evaluation, generation, logging, "
        "lora, model, "
        "prompt, training"
    ]


@pytest.mark.parametrize(
    "typed,meant",
    [
        ("training.lr", "training.learning_rate"),
        ("training.wd", "training.weight_decay"),
        ("training.learning_rte", "training.learning_rate"),
    ],
)
def test_unknown_key_names_the_key_meant(typed, meant):
    """Mutation caught: spelling similarity alone (it suggests 'training.seed' for 'training.lr')."""
    with pytest.raises(ConfigError) as error:
        load_config(ROOT / "configs" / "demo.yaml", [f"{typed}=1"])
    assert str(error.value) == f"--set {typed}: unknown config key '{typed}' (did you mean '{meant}'?)"
