"""`dialsum plan`: the estimates match a hand calculation, and the command runs offline from config.json + tokenizer."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from tests.conftest import ROOT, shared_file
from typer.testing import CliRunner

from dialsum.cli import app
from dialsum.config import config_from_dict
from dialsum.plan import Architecture, memory_estimate


def llama_3b() -> Architecture:
    path = shared_file("models/llama-3.2-korean-bllossom-3b/config.json")
    return Architecture.from_config(json.loads(path.read_text()))


def test_weights_and_optimizer_state_match_the_hand_calculation():
    """Bllossom Llama-3.2-3B: vocab 128,256, hidden 3072, 28 layers, 24 query / 8 KV heads of 128, MLP 8192, tied."""
    embedding = 128_256 * 3072  # 394,002,432; tied, so the LM head adds nothing
    attention = 3072 * 3072 + 3072 * 1024 + 3072 * 1024 + 3072 * 3072  # q, k, v, o
    mlp = 3 * 3072 * 8192  # gate, up, down
    norms = 2 * 3072
    params = embedding + 28 * (attention + mlp + norms) + 3072
    assert params == 3_212_749_824  # the published 3.21 B
    arch = llama_3b()
    assert arch.params == params

    config = config_from_dict({"model": {"name_or_path": "x"}})  # defaults: dtype auto, LoRA r=16 all-linear
    full = memory_estimate(arch, config, "full", tokens=1024, row_length=1024)
    assert full["weights"] == 4 * params  # fp32 master weights (the precision policy), bf16 compute
    assert full["gradients"] == 4 * params
    assert full["optimizer"] == 2 * 4 * params  # AdamW: two fp32 moments
    explicit = memory_estimate(
        arch,
        config_from_dict({"model": {"name_or_path": "x", "dtype": "bfloat16"}}),
        "full",
        tokens=1024,
        row_length=1024,
    )
    assert explicit["weights"] == 2 * params and explicit["optimizer"] == 2 * 2 * params  # what the user asked for

    adapters = 28 * 16 * ((3072 + 3072) + (3072 + 1024) * 2 + (3072 + 3072) + (3072 + 8192) * 2 + (8192 + 3072))
    assert adapters == 24_313_856
    lora = memory_estimate(arch, config, "lora", tokens=1024, row_length=1024)
    assert lora["weights"] == 2 * params + 4 * adapters  # frozen bf16 base + fp32 adapters
    assert lora["gradients"] == 4 * adapters and lora["optimizer"] == 8 * adapters
    qlora = memory_estimate(arch, config, "qlora", tokens=1024, row_length=1024)
    quantised = 28 * (attention + mlp)
    assert qlora["weights"] == pytest.approx(quantised * (0.5 + 1 / 64) + (params - quantised) * 2 + 2 * adapters)
    assert qlora["optimizer"] == 4 * adapters

    # activations: bf16, (6d + 2k + 4I) values per token per layer; checkpointing keeps each layer's input + one layer
    per_layer = 2 * (6 * 3072 + 2 * 1024 + 4 * 8192)
    assert full["activations"] == 1024 * 28 * per_layer
    assert full["activations_checkpointed"] == 1024 * (28 * 2 * 3072 + per_layer)


def test_qwen_architectures_from_the_model_card_and_config():
    """Qwen2.5-3B from its model card (hidden 2048, 36 layers, 16/2 heads, MLP 11008, tied, vocab 151,936) is
    ~3.09 B parameters; the 1.5B config.json gives the published 1.54 B (qkv biases, 57k, are left out)."""
    qwen_3b = Architecture.from_config(
        {
            "vocab_size": 151_936,
            "hidden_size": 2048,
            "num_hidden_layers": 36,
            "num_attention_heads": 16,
            "num_key_value_heads": 2,
            "intermediate_size": 11_008,
            "tie_word_embeddings": True,
        }
    )
    assert qwen_3b.params / 1e9 == pytest.approx(3.09, abs=0.01)
    config = json.loads(shared_file("models/qwen2.5-1.5b-instruct/config.json").read_text())
    assert Architecture.from_config(config).params == pytest.approx(1_543_714_304, abs=60_000)


def test_plan_command_runs_offline(tmp_path):
    dev = shared_file("data/dialogsum-ko/dev.csv")
    model_dir = shared_file("models/llama-3.2-korean-bllossom-3b/config.json").parent
    out = tmp_path / "plan.json"
    result = CliRunner().invoke(
        app,
        [
            "plan",
            str(ROOT / "configs" / "llama-3.2-korean-3b.yaml"),
            "--data",
            str(dev),
            "--model-dir",
            str(model_dir),
            "--train-examples",
            "12457",
            "--json",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    plan = json.loads(out.read_text())
    assert plan["examples"] == 12_457 and plan["examples_in_file"] == 499 and plan["params"] == 3_212_749_824
    assert plan["layout"] == "packed rows" and plan["method"] == "full"
    padded, rows, flat = (plan["layouts"][k] for k in ("padded", "packed rows", "packed flat"))
    for layout in (padded, rows, flat):  # packing keeps the recipe: 8 x 8 examples per optimizer step
        assert layout["examples_per_step"] == pytest.approx(64, rel=0.1)
        assert layout["optimizer_steps_per_epoch"] == pytest.approx(12_457 / 64, rel=0.1)
    # rows of similar length share a micro-batch (padded to its longest row): ~1 % waste, 2.7 % without grouping
    assert padded["padding_waste"] > 0.3 and rows["padding_waste"] < 0.015 and flat["padding_waste"] == 0
    assert rows["flops_per_real_token"] <= 0.8 * padded["flops_per_real_token"]
    assert flat["flops_per_real_token"] <= 0.7 * padded["flops_per_real_token"]
    assert plan["memory_gb"]["full"]["weights"] == pytest.approx(4 * 3_212_749_824 / 1e9)  # fp32 master weights
    assert plan["hours"]["packed rows"]["H100"] < plan["hours"]["packed rows"]["A100"]


def test_plan_without_a_local_model_is_one_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DIALSUM_MODEL_DIRS", str(tmp_path))
    config = tmp_path / "c.yaml"
    config.write_text("model:\n  name_or_path: nobody/no-such-model\ndata:\n  train: x.csv\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    result = subprocess.run(
        [sys.executable, "-m", "dialsum.cli", "plan", str(config)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    assert result.returncode == 2, result.stderr
    assert "--model-dir" in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
