"""predict.py: a split predicted in input order from a run, a model folder or an adapter; the run's settings,
never the checkpoint's; unsafe checkpoints refused."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from conftest import ROOT, SAMPLE, SHARED, shared_file
from dialsum.config import save_config
from dialsum.data import load_dialogues
from dialsum.errors import DialsumError
from dialsum.generate import generate_summaries
from dialsum.models import load_for_inference
from dialsum.predict import predict
from test_generate import make_config, read_rows

SAMPLE_TEST = SAMPLE / "test.csv"
SHARED_TEST = SHARED / "data" / "dialogsum-ko" / "test.csv"


SHARED_MODELS = SHARED / "models"


class _Evil:
    """A pickle that would create a file when loaded with weights_only=False."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def _run_dir(tmp_path: Path, model_path: Path, **generation) -> Path:
    run = tmp_path / "run"
    shutil.copytree(model_path, run / "model")
    save_config(make_config(model_path, **generation), run / "config.yaml")
    return run


@pytest.mark.slow
def test_predict_on_sample_keeps_ids_in_order(tiny_llama, tmp_path):
    run = _run_dir(tmp_path, tiny_llama, max_new_tokens=8, no_repeat_ngram_size=1)
    out = tmp_path / "pred.csv"
    stats = predict(run, SAMPLE_TEST, out, progress=False)
    rows = read_rows(out)
    assert [r["fname"] for r in rows] == [d.id for d in load_dialogues(SAMPLE_TEST)]
    assert list(rows[0]) == ["fname", "summary"]
    assert stats["n"] == len(rows) and stats["foreign"] == 0 and stats["empty"] == sum(not r["summary"] for r in rows)


def real_generation_config(folder: str, tiny_tokenizer) -> dict:
    """A real checkpoint's generation_config.json, its token ids mapped by name onto a tiny tokenizer
    (Bllossom's eos 128001 is <|end_of_text|>; KoBART's forced_eos 1 is </s>)."""
    from transformers import AutoTokenizer

    path = SHARED_MODELS / folder / "generation_config.json"
    if not path.is_file():
        pytest.skip(f"../shared/models/{folder}/generation_config.json not present")
    real = AutoTokenizer.from_pretrained(str(SHARED_MODELS / folder))
    values = json.loads(path.read_text(encoding="utf-8"))

    def tiny_id(value):
        if isinstance(value, list):
            return [tiny_id(v) for v in value]
        return tiny_tokenizer.convert_tokens_to_ids(real.convert_ids_to_tokens(value))

    return {key: tiny_id(value) if key.endswith("token_id") else value for key, value in values.items()}


@pytest.mark.slow
def test_bllossom_generation_config_does_not_override_the_config(tiny_llama, tmp_path):
    """Bllossom's generation_config.json (do_sample true, temperature 0.6, top_p 0.9, eos <|end_of_text|>) on a
    model whose turns end with <|eot_id|>: with the config's greedy settings predictions are deterministic and
    equal to those without that file, generation stops at the closer, and what was ignored is said.
    Mutation caught: generate() left to merge the checkpoint's generation config (no effective config / no
    generation report), and stop tokens without the closer."""
    from dialsum.models import load_tokenizer

    run = _run_dir(tmp_path, tiny_llama, max_new_tokens=8, no_repeat_ngram_size=1)
    tokenizer = load_tokenizer(run / "model", make_config(tiny_llama))
    keys = real_generation_config("llama-3.2-korean-bllossom-3b", tokenizer)
    assert keys["do_sample"] is True and keys["eos_token_id"] == tokenizer.convert_tokens_to_ids("<|end_of_text|>")
    plain = tmp_path / "plain.csv"
    (run / "model" / "generation_config.json").write_text("{}")
    predict(run, SAMPLE_TEST, plain, progress=False)
    (run / "model" / "generation_config.json").write_text(json.dumps(keys))
    outputs = []
    for name in ("a.csv", "b.csv"):
        stats = predict(run, SAMPLE_TEST, tmp_path / name, progress=False)
        outputs.append(read_rows(tmp_path / name))
    assert outputs[0] == outputs[1] == read_rows(plain)
    generation = stats["generation"]
    assert generation["used"]["do_sample"] is False and "temperature" not in generation["used"]
    assert generation["ignored_from_checkpoint"] == {"do_sample": True, "temperature": 0.6, "top_p": 0.9}
    eot = tokenizer.convert_tokens_to_ids("<|eot_id|>")
    assert generation["used"]["eos_token_id"][0] == eot and keys["eos_token_id"] in generation["used"]["eos_token_id"]


@pytest.mark.slow
def test_kobart_forced_eos_is_reported_and_never_in_a_summary(tiny_bart, tmp_path):
    """KoBART's generation_config.json forces </s> (forced_eos_token_id 1). The config's settings decide: the
    forced token is ignored and said, and no special token reaches a summary. Mutation caught: the checkpoint's
    forced_eos_token_id applied silently (with max_new_tokens=1 every summary comes out empty)."""
    from dialsum.models import load_tokenizer

    # (no_repeat_ngram_size=1 bans the decoder-start </s>: a random tiny BART would stop at once otherwise)
    run = _run_dir(tmp_path, tiny_bart, max_new_tokens=1, no_repeat_ngram_size=1)
    tokenizer = load_tokenizer(run / "model", make_config(tiny_bart))
    keys = real_generation_config("kobart", tokenizer)
    assert keys["forced_eos_token_id"] == tokenizer.eos_token_id
    (run / "model" / "generation_config.json").write_text(json.dumps(keys))
    out = tmp_path / "pred.csv"
    stats = predict(run, SAMPLE_TEST, out, progress=False)
    rows = read_rows(out)
    assert stats["generation"]["ignored_from_checkpoint"].get("forced_eos_token_id") == tokenizer.eos_token_id
    assert len(rows) == stats["n"] == 10 and stats["empty"] == sum(not r["summary"] for r in rows) < 10
    assert not any(token in r["summary"] for r in rows for token in tokenizer.all_special_tokens)


@pytest.mark.slow
def test_bin_checkpoint_predicts_and_pickled_code_is_refused(tiny_bart, tmp_path):
    """digit82/kobart-summarization ships only pytorch_model.bin: it loads through torch's weights_only loader
    and the console names the format. A .bin whose pickle would run code is refused in one line and the code
    does not run. Mutations caught: use_safetensors=True (the .bin cannot load); weights_only=False (runs it)."""
    import os
    import subprocess
    import sys

    from safetensors.torch import load_file

    model_dir = tmp_path / "kobart-bin"
    shutil.copytree(tiny_bart, model_dir)
    state = load_file(model_dir / "model.safetensors")
    (model_dir / "model.safetensors").unlink()
    torch.save(state, model_dir / "pytorch_model.bin")
    out = tmp_path / "pred.csv"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    command = [
        sys.executable,
        "-m",
        "dialsum.cli",
        "predict",
        "--model",
        str(model_dir),
        "--data",
        str(SAMPLE_TEST),
        "--output",
        str(out),
        "--set",
        "generation.max_new_tokens=4",
    ]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "pytorch_model.bin" in done.stderr and len(read_rows(out)) == 10

    marker = tmp_path / "PWNED"
    torch.save({"x": _Evil(str(marker))}, model_dir / "pytorch_model.bin")
    command[command.index(str(out))] = str(tmp_path / "refused.csv")  # outputs are never silently replaced
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-2000:]
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "weights_only" in errors[0] and "pytorch_model.bin" in errors[0]
    assert not marker.exists() and not (tmp_path / "refused.csv").exists()


@pytest.mark.slow
def test_predict_on_real_test_file(tiny_llama, tmp_path):
    shared_file("data/dialogsum-ko/test.csv")  # absent: a failure under CI, a skip elsewhere
    out = tmp_path / "pred.csv"
    stats = predict(
        tiny_llama,
        SHARED_TEST,
        out,
        config=make_config(tiny_llama),
        progress=False,
        overrides=["generation.max_new_tokens=4", "generation.batch_size=32"],
    )
    ids = [r["fname"] for r in read_rows(out)]
    assert ids == [d.id for d in load_dialogues(SHARED_TEST)] and len(ids) == stats["n"] == 499


@pytest.mark.slow
def test_lora_adapter_run_is_merged_for_inference(tiny_llama, tmp_path, sample_dialogues):
    from peft import LoraConfig, get_peft_model

    from dialsum.models import load_model, load_tokenizer

    config = make_config(tiny_llama, max_new_tokens=8, no_repeat_ngram_size=1)
    tokenizer = load_tokenizer(tiny_llama, config)
    tokenizer.add_special_tokens({"pad_token": "<|pad|>"})  # as training does when the model has no pad
    base = load_model(tiny_llama, config)
    base.resize_token_embeddings(len(tokenizer))
    torch.manual_seed(0)
    peft_model = get_peft_model(base, LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False))
    run = tmp_path / "run"
    peft_model.save_pretrained(run / "model")
    tokenizer.save_pretrained(run / "model")
    save_config(config, run / "config.yaml")

    model, loaded_tokenizer, loaded_config = load_for_inference(run)
    assert not hasattr(model, "peft_config") and loaded_tokenizer.padding_side == "left"
    assert model.get_input_embeddings().num_embeddings == len(tokenizer)
    ids = torch.tensor([tokenizer("안녕하세요 반갑습니다")["input_ids"]])
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, peft_model.eval()(ids).logits, atol=1e-4, rtol=1e-4)
    assert generate_summaries(model, loaded_tokenizer, sample_dialogues[:2], loaded_config, progress=False)[0]


@pytest.mark.slow
def test_cli_predict_on_a_bare_tiny_model_keeps_every_test_id(tiny_bart, tmp_path):
    """`dialsum predict --model DIR --data test.csv --output out.csv` with no --config: the kind comes from
    config.json (is_encoder_decoder), the rest from the defaults; all test ids in order. Mutation caught: the
    old 'pass a config' error; kind left at the default (causal) for an encoder-decoder checkpoint."""
    from typer.testing import CliRunner

    from dialsum.cli import app
    from dialsum.tiny import make_tiny_model

    data = SHARED_TEST if SHARED_TEST.is_file() else SAMPLE_TEST
    model_dir = make_tiny_model("bart", tmp_path / "fresh")
    out = tmp_path / "out.csv"
    result = CliRunner().invoke(
        app,
        [
            "predict",
            "--model",
            str(model_dir),
            "--data",
            str(data),
            "--output",
            str(out),
            "--set",
            "generation.max_new_tokens=2",
            "--set",
            "generation.batch_size=64",
        ],
    )
    assert result.exit_code == 0, result.output
    ids = [r["fname"] for r in read_rows(out)]
    assert ids == [d.id for d in load_dialogues(data)]
    if data == SHARED_TEST:
        assert len(ids) == 499


def test_vllm_errors_are_clear(tiny_llama, tiny_bart, tmp_path, monkeypatch):
    import sys

    with pytest.raises(DialsumError, match="decoder-only"):
        predict(tiny_bart, SAMPLE_TEST, tmp_path / "p.csv", config=make_config(tiny_bart, backend="vllm"))
    monkeypatch.setitem(sys.modules, "vllm", None)  # absent, also where vLLM is installed: the import fails
    with pytest.raises(DialsumError, match=r"pip install 'dialsum\[vllm\]'"):
        predict(tiny_llama, SAMPLE_TEST, tmp_path / "p.csv", config=make_config(tiny_llama, backend="vllm"))
    assert not (tmp_path / "p.csv").exists()


@pytest.mark.slow
def test_vllm_backend_predicts_in_input_order(tiny_llama, tmp_path):
    """Where vLLM and a GPU are present, the vLLM backend writes one row per dialogue, in input order."""
    pytest.importorskip("vllm", reason="vLLM is not installed (pip install 'dialsum[vllm]')")
    if not torch.cuda.is_available():
        pytest.skip("vLLM is installed but there is no CUDA GPU")
    out = tmp_path / "pred.csv"
    stats = predict(
        tiny_llama, SAMPLE_TEST, out, config=make_config(tiny_llama, backend="vllm", max_new_tokens=8), progress=False
    )
    assert [r["fname"] for r in read_rows(out)] == [d.id for d in load_dialogues(SAMPLE_TEST)]
    assert stats["n"] == len(read_rows(out)) and stats["foreign"] == 0


@pytest.mark.slow
def test_predict_says_when_test_prompts_lack_the_topics_training_used(tiny_llama, tmp_path, capsys):
    """A run trained with prompt.topic=always predicting a file without topics (the competition's test.csv
    shape) says so in one line. Mutation caught: predict not calling topic_mismatch."""
    run = _run_dir(tmp_path, tiny_llama, max_new_tokens=2)
    config = make_config(tiny_llama, max_new_tokens=2)
    config.prompt.topic = "always"
    save_config(config, run / "config.yaml")
    predict(run, SAMPLE_TEST, tmp_path / "p.csv", progress=False)
    lines = [line for line in capsys.readouterr().err.splitlines() if "have no topic" in line]
    assert len(lines) == 1 and "10 of 10" in lines[0]
