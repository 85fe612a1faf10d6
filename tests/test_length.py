"""Length control (generation.max_new_tokens: auto) and several candidates per dialogue (predict --num-candidates)."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest

from conftest import SAMPLE, shared_file
from dialsum.config import config_from_dict, token_budget
from dialsum.data import load_dialogues
from dialsum.errors import ConfigError, DialsumError
from dialsum.length import dialogue_chars, fit_length_rule, limits_for, rule_limit, with_length_rule


def _config(model_path, **generation):
    data = {"train": str(SAMPLE / "train.csv")}
    return config_from_dict({"model": {"name_or_path": str(model_path)}, "data": data, "generation": generation})


@pytest.fixture(scope="module")
def llama_tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(shared_file("models/llama-3.2-korean-bllossom-3b/tokenizer.json").parent)


def test_rule_on_real_dev_is_tight_per_bucket_and_grows_with_dialogue_length(llama_tokenizer):
    """Each bucket's limit lets `quantile` of its training summaries (+ stop token) finish, and one token less would
    not; longer dialogues get more room. Catches the stop token left out, buckets off by one, a global quantile."""
    dialogues = load_dialogues(shared_file("data/dialogsum-ko/dev.csv"))
    rule = fit_length_rule(dialogues, llama_tokenizer, buckets=5, quantile=0.9, cap=512)
    tokens = [len(llama_tokenizer(d.references[0], add_special_tokens=False)["input_ids"]) + 1 for d in dialogues]
    edges = [b["max_chars"] for b in rule["buckets"][:-1]]
    bucket_of = [sum(1 for e in edges if dialogue_chars(d) > e) for d in dialogues]
    assert [b["n"] for b in rule["buckets"]] == [bucket_of.count(i) for i in range(5)] == [100, 101, 98, 100, 100]
    for index, bucket in enumerate(rule["buckets"]):
        members = [t for t, b in zip(tokens, bucket_of) if b == index]
        assert np.mean([t <= bucket["limit"] for t in members]) >= 0.9
        assert bucket["limit"] == math.ceil(np.quantile(members, 0.9))  # and no looser
    assert [rule_limit(rule, dialogue_chars(d)) for d in dialogues] == [rule["buckets"][b]["limit"] for b in bucket_of]
    first, last = rule["buckets"][0]["limit"], rule["buckets"][-1]["limit"]
    assert last > first + 20  # real summaries of long dialogues are longer
    assert rule["global_limit"] == math.ceil(np.quantile(tokens, 0.9))
    capped = fit_length_rule(dialogues, llama_tokenizer, buckets=5, quantile=0.9, cap=60)
    assert max(b["limit"] for b in capped["buckets"]) == 60 and capped["global_limit"] == 60


def test_rule_limit_bucket_edges():
    rule = {
        "buckets": [
            {"max_chars": 100.0, "limit": 10},
            {"max_chars": 200.0, "limit": 20},
            {"max_chars": None, "limit": 30},
        ]
    }
    assert [rule_limit(rule, c) for c in (0, 100, 101, 200, 201, 10_000)] == [10, 10, 20, 20, 30, 30]


def test_auto_config_validates_and_budgets_the_prompt(tmp_path):
    config = _config("x", max_new_tokens="auto", max_new_tokens_cap=96)
    assert config.generation.max_new_tokens == "auto" and token_budget(config.generation) == 96
    assert token_budget(_config("x", max_new_tokens=40).generation) == 40
    with pytest.raises(ConfigError, match="generation.max_new_tokens"):
        _config("x", max_new_tokens="long")
    with pytest.raises(ConfigError, match="length_buckets"):
        fit_length_rule(load_dialogues(SAMPLE / "dev.csv")[:3], None, buckets=5)


@pytest.mark.slow
def test_rule_is_written_into_the_config_and_used(tiny_llama):
    from dialsum.models import load_tokenizer

    config = _config(tiny_llama, max_new_tokens="auto", length_buckets=3)
    tokenizer = load_tokenizer(tiny_llama, config)
    fitted = with_length_rule(config, tokenizer)
    assert fitted.generation.length_rule["n"] == 40 and len(fitted.generation.length_rule["buckets"]) == 3
    assert config_from_dict(fitted.to_dict()).generation.length_rule == fitted.generation.length_rule  # YAML-safe
    dev = load_dialogues(SAMPLE / "dev.csv")
    assert limits_for(fitted.generation, tokenizer, dev) == limits_for(
        config.generation, tokenizer, dev, config.data.train
    )  # fitted on data.train alike
    assert with_length_rule(_config(tiny_llama), tokenizer).generation.length_rule is None  # fixed: untouched


@pytest.mark.slow
def test_per_dialogue_limits_equal_generating_each_with_its_own_limit(tiny_llama):
    """A batch generates to its largest limit and cuts each row to its own: the same text as generating that
    dialogue alone with max_new_tokens = its limit. Catches the cut left out (every row gets the batch maximum)."""
    from dialsum.generate import generate_summaries
    from dialsum.models import load_for_inference

    config = _config(tiny_llama, max_new_tokens=12, no_repeat_ngram_size=1, batch_size=4)
    model, tokenizer, config = load_for_inference(tiny_llama, config)
    dialogues = load_dialogues(SAMPLE / "test.csv")[:4]
    limits = [3, 12, 6, 1]
    batched = generate_summaries(model, tokenizer, dialogues, config, progress=False, max_new_tokens=limits)
    alone = []
    for dialogue, limit in zip(dialogues, limits):
        config.generation.max_new_tokens = limit
        alone.append(generate_summaries(model, tokenizer, [dialogue], config, progress=False)[0])
    assert batched == alone
    assert len(set(len(t) for t in batched)) > 2  # the limits really differ in the output


@pytest.mark.slow
def test_num_candidates_writes_beams_for_the_ensemble(tiny_llama, tmp_path):
    """`predict --num-candidates 3` with 3 beams: three rows per dialogue, candidate 0 is the top beam (what a
    single-summary beam search returns); greedy with 3 candidates is refused (one line, exit 2)."""
    import shutil
    import subprocess
    import sys

    from conftest import ROOT
    from dialsum.config import save_config
    from dialsum.ensemble import load_sources
    from dialsum.predict import predict

    run = tmp_path / "run"
    shutil.copytree(tiny_llama, run / "model")
    save_config(_config(tiny_llama, max_new_tokens=10, num_beams=3, no_repeat_ngram_size=1), run / "config.yaml")
    data = SAMPLE / "dev.csv"
    predict(run, data, tmp_path / "cands.csv", num_candidates=3, progress=False)
    stats = predict(run, data, tmp_path / "single.csv", progress=False)
    assert set(stats["cleanup"]) == {"normalize_tags", "remove_think", "remove_artifacts"}  # clean-up ran, counted
    with (tmp_path / "cands.csv").open(encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    ids = [d.id for d in load_dialogues(data)]
    assert [(r["fname"], r["candidate"]) for r in rows] == [(i, str(c)) for i in ids for c in range(3)]
    sources = load_sources([tmp_path / "cands.csv"])
    assert sources.texts[0] == [r["summary"] for r in csv.DictReader((tmp_path / "single.csv").open(encoding="utf-8"))]
    assert any(len(set(row)) > 1 for row in sources.by_row())  # beams differ

    greedy = tmp_path / "greedy"
    shutil.copytree(run, greedy)
    save_config(_config(tiny_llama, max_new_tokens=10), greedy / "config.yaml")
    command = [
        sys.executable,
        "-m",
        "dialsum.cli",
        "predict",
        "--model",
        str(greedy),
        "--data",
        str(data),
        "--output",
        str(tmp_path / "g.csv"),
        "--num-candidates",
        "3",
    ]
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 2 and "generation.num_beams >= 3" in result.stderr
    assert result.stderr.strip().count("\n") == 0
    with pytest.raises(DialsumError):
        predict(greedy, data, tmp_path / "g.csv", num_candidates=3, progress=False)


@pytest.mark.slow
def test_dialsum_train_alone_saves_the_rule(tiny_llama, tmp_path):
    """`dialsum train` with max_new_tokens=auto stores the fitted rule in the run's config.yaml, so predicting needs
    no training file. Mutation caught: the rule fitted only by `dialsum run` (train leaves length_rule null)."""
    from dialsum.config import load_config
    from dialsum.train import train

    raw = _config(tiny_llama, max_new_tokens="auto", length_buckets=3).to_dict()
    raw["training"].update(max_steps=1, per_device_train_batch_size=2, gradient_accumulation_steps=1)
    run_dir = train(config_from_dict(raw), output_dir=tmp_path / "run")
    rule = load_config(run_dir / "config.yaml").generation.length_rule
    assert rule is not None and len(rule["buckets"]) == 3 and rule["n"] == 40
