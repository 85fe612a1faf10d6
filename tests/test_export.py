"""`dialsum export`: merge with a parity check, plain-transformers reload, generation_config, model card, Hub push."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from conftest import ROOT, SAMPLE
from dialsum.errors import DialsumError

DEV = SAMPLE / "dev.csv"


def _dialsum(*args):
    return subprocess.run(
        [sys.executable, "-m", "dialsum.cli", *map(str, args)], capture_output=True, text=True, cwd=ROOT
    )


def _predict(model_path, n=3):
    """`dialsum predict` of each dialogue on its own (in a batch, left padding moves a random tiny model's near-tied
    logits by float noise)."""
    from dialsum.data import load_dialogues
    from dialsum.predict import Predictor, predict_split

    dialogues = load_dialogues(DEV)[:n]
    predictor = Predictor.from_path(model_path)
    return dialogues, [predict_split(predictor, [d], progress=False).summaries[0] for d in dialogues]


@pytest.fixture(scope="module")
def lora_export(tiny_lora_run, tmp_path_factory):
    from dialsum.export import export

    output = tmp_path_factory.mktemp("exports") / "lora"
    return export(tiny_lora_run, output), output


def test_merge_dtype_is_the_training_dtype_and_bf16_under_qlora():
    """Mutation caught: merging at the 4-bit load's dtype (or the CPU inference dtype) under QLoRA."""
    import torch

    from conftest import tiny_run_config
    from dialsum.export import merge_dtype

    config = tiny_run_config(lora=True)
    assert merge_dtype(config) == torch.float32  # LoRA on the CPU trained beside an fp32 base
    config.lora.load_in_4bit = True
    assert merge_dtype(config) == torch.bfloat16  # QLoRA: a fresh bf16 base, never the 4-bit weights


@pytest.mark.slow
def test_lora_export_is_merged_safetensors_with_the_runs_decoding(lora_export, tiny_lora_run):
    result, output = lora_export
    files = set(result["files"])
    assert {"model.safetensors", "config.json", "generation_config.json", "tokenizer.json", "README.md"} <= files
    assert "chat_template.jinja" in files or "chat_template" in (output / "tokenizer_config.json").read_text()
    assert not any(name.startswith("adapter_") or name.endswith(".bin") for name in files)
    assert result["parity"]["merged"]["max_abs_logit_difference"] <= result["parity"]["merged"]["tolerance"]
    assert result["parity"]["reloaded"]["summaries_equal"]
    generation = json.loads((output / "generation_config.json").read_text())
    # tiny:llama's own generation_config says do_sample/temperature 0.6/top_p 0.9 (like Bllossom): none survives
    assert generation["do_sample"] is False and "temperature" not in generation and "top_p" not in generation
    assert generation["max_new_tokens"] == 16
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(output)
    assert generation["eos_token_id"][0] == tokenizer.convert_tokens_to_ids("<|eot_id|>")  # the turn closer
    assert generation.get("suppress_tokens"), "the static foreign-script ban travels with the model"
    assert json.loads((output / "config.json").read_text())["use_cache"] is True


@pytest.mark.slow
def test_plain_transformers_reproduces_dialsum_predict(lora_export, tiny_lora_run):
    """The model card's usage snippet, run in a fresh interpreter without dialsum, gives `dialsum predict`'s
    summaries. Mutations caught: the snippet without the pinned date_string, a generation_config.json without the
    turn closer or with the checkpoint's sampling, the export's tokenizer without its chat template."""
    _, output = lora_export
    card = (output / "README.md").read_text(encoding="utf-8")
    snippet = re.search(r"```python\n(.*?)```", card, re.S).group(1)
    snippet = snippet.rsplit("\nprint(summarize(", 1)[0].replace("REPO = '.'", f"REPO = {str(output)!r}")
    dialogues, expected = _predict(tiny_lora_run)
    texts = [("\n".join(f"{t.speaker}: {t.utterance}" for t in d.turns), d.topic) for d in dialogues]
    program = snippet + (
        f"\nimport json\nrows = {texts!r}\n"
        "print(json.dumps([tokenizer(prompt(t, topic), add_special_tokens=False)['input_ids'] for t, topic in rows]))\n"
        "print(json.dumps([summarize(t, topic) for t, topic in rows]))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", "import sys; sys.modules['dialsum'] = None\n" + program],
        capture_output=True,
        text=True,
        env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    from dialsum.encode import encode_prompt
    from dialsum.models import load_tokenizer, resolve_inference_source

    source = resolve_inference_source(tiny_lora_run)
    tokenizer, config = load_tokenizer(source.model_dir, source.config), source.config
    ids, summaries = (json.loads(line) for line in result.stdout.strip().splitlines()[-2:])
    assert ids == [encode_prompt(tokenizer, d, config) for d in dialogues]  # token for token the training prompt
    assert summaries == expected
    assert _predict(output)[1] == expected  # dialsum predict/serve on the export itself


@pytest.mark.slow
def test_model_card_metadata_parses_as_the_hub_expects(lora_export, tiny_lora_run):
    from huggingface_hub import ModelCard

    from dialsum.card import card_metadata, file_sha256

    _, output = lora_export
    card = ModelCard.load(output / "README.md")
    data = card.data
    assert data.language == "ko" and data.license == "apache-2.0" and data.datasets == ["example/dialogsum-ko"]
    assert data.metrics == ["rouge"] and data.library_name == "transformers"
    assert data.base_model is None  # tiny:llama is no hub id
    results = {r.metric_name: r for r in data.eval_results}
    scores = json.loads((tiny_lora_run / "dev_scores.json").read_text())
    headline = results["final score (mean of ROUGE-1/2/L F1) (scheme kiwi)"]
    assert headline.metric_config == "kiwi" and headline.metric_value == pytest.approx(scores["final_score"], abs=1e-3)
    text = card.text
    for needed in (
        "## Prompt format",
        "[Conversation]",
        "## Decoding",
        "<|eot_id|>",
        "Scheme `kiwi`",
        "Analyzer:",
        "95 % interval",
        "## Training",
        "transformers",
        file_sha256(SAMPLE / "train.csv"),
    ):
        assert needed in text, needed
    from conftest import tiny_run_config

    config = tiny_run_config(lora=True)
    config.model.name_or_path = "Bllossom/llama-3.2-Korean-Bllossom-3B"
    assert card_metadata(config, scores, "x").base_model == "Bllossom/llama-3.2-Korean-Bllossom-3B"


@pytest.mark.slow
def test_broken_merge_fails_the_parity_check_and_writes_nothing(tiny_lora_run, tmp_path):
    """A merge at twice the LoRA scale (an alpha/r mix-up) moves logits far beyond PARITY_TOLERANCE."""
    from dialsum.export import ParityError, export

    def broken_merge(model):
        for module in model.modules():
            if isinstance(getattr(module, "scaling", None), dict):
                module.scaling = {k: 2 * v for k, v in module.scaling.items()}
        return model.merge_and_unload()

    with pytest.raises(ParityError, match="PARITY_TOLERANCE"):
        export(tiny_lora_run, tmp_path / "out", merge_fn=broken_merge)
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out*"))


@pytest.mark.slow
def test_full_run_exports_with_parity(tiny_full_run, tmp_path):
    from dialsum.export import export

    result = export(tiny_full_run, tmp_path / "full")
    assert result["kind"] == "model" and set(result["parity"]) == {"reloaded"}
    assert "No dev scores" in (tmp_path / "full" / "README.md").read_text(encoding="utf-8")
    assert "model.safetensors" in result["files"]


@pytest.mark.slow
def test_no_merge_exports_the_adapter_with_a_pointer_to_its_base(tiny_lora_run, tmp_path):
    from dialsum.export import export

    result = export(tiny_lora_run, tmp_path / "adapter", merge=False)
    adapter = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == "tiny:llama" and result["kind"] == "adapter"
    assert "model.safetensors" not in result["files"] and "adapter_model.safetensors" in result["files"]
    from huggingface_hub import ModelCard

    assert ModelCard.load(tmp_path / "adapter" / "README.md").data.library_name == "peft"
    assert _predict(tmp_path / "adapter", n=2)[1] == _predict(tiny_lora_run, n=2)[1]


@pytest.mark.slow
def test_push_to_hub_offline_is_one_line_after_the_export_and_dry_run_lists(tiny_full_run, tmp_path, capsys):
    from dialsum.export import export, push_to_hub

    with pytest.raises(DialsumError, match="HF_HUB_OFFLINE") as error:
        export(tiny_full_run, tmp_path / "x", push_repo="someone/tiny")
    assert "\n" not in str(error.value) and "is complete" in str(error.value)
    assert (tmp_path / "x" / "model.safetensors").is_file()  # the local export finished first
    listed = push_to_hub(tmp_path / "x", "someone/tiny", private=True, dry_run=True)
    out = capsys.readouterr().out
    assert "model.safetensors" in listed["files"] and "(private)" in out and "README.md" in out


def test_export_bad_input_is_one_line_before_anything_loads(tmp_path):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "f").write_text("x")
    for args, needle in (
        ([tmp_path, "--output", tmp_path / "o"], "not a run directory"),
        ([tmp_path, "--output", tmp_path / "o", "--dry-run"], "--push-to-hub"),
    ):
        result = _dialsum("export", *args)
        assert result.returncode == 2 and "Traceback" not in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1 and needle in result.stderr, result.stderr
    from dialsum.export import check_repo_id

    with pytest.raises(DialsumError, match="OWNER/NAME"):
        check_repo_id("no-slash")
