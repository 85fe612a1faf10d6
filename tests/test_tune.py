"""`dialsum tune` on the tiny Llama over rows of the bundled sample: a study completes and writes its outputs, a grid
enumerates exactly its product (identical settings answered from the cache), a killed study resumes without rerunning
a trial, best.yaml reproduces the best trial's score through `dialsum predict`, the halves are disjoint and stable,
and every bad space is one line, exit 2, nothing written."""

from __future__ import annotations

import csv
import itertools
import json
import shutil
import sys

import optuna
import pytest
import yaml

from conftest import SAMPLE
from dialsum.config import config_from_dict, load_config, save_config
from dialsum.data import load_dialogues
from dialsum.rundir import TUNE_OUTPUTS, TUNE_SPLIT_FILE, TUNE_TRIALS_FILE
from dialsum.schemes import score_dialogues
from dialsum.tune import tune

ROWS = 12  # 6 tuning, 6 held-out; batches of 2 so a trial's pruning slice is one batch of three


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tiny_llama):
    """A run directory (config.yaml + model/) around the tiny Llama, decoding short and fast."""
    run = tmp_path_factory.mktemp("tune") / "run"
    shutil.copytree(tiny_llama, run / "model")
    raw = load_config(SAMPLE.parent.parent.parent / "configs" / "demo.yaml").to_dict()
    raw["model"]["name_or_path"] = str(run / "model")
    raw["generation"].update(max_new_tokens=10, batch_size=2, no_repeat_ngram_size=3)
    raw["training"]["max_length"] = 256
    raw["prompt"]["topic"] = "always"
    raw["data"] = {"train": str(SAMPLE / "train.csv"), "dev": str(SAMPLE / "dev.csv")}
    save_config(config_from_dict(raw), run / "config.yaml")
    return run


@pytest.fixture(scope="module")
def dev(tmp_path_factory):
    """ROWS labelled dialogues, in the competition CSV."""
    with open(SAMPLE / "train.csv", encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))[:ROWS]
    for i, row in enumerate(rows):  # three topics of four rows: the seeded split within each topic is not trivial
        row["topic"] = ["일상", "업무", "여가"][i % 3]
    path = tmp_path_factory.mktemp("data") / "dev.csv"
    with open(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def write_space(path, space: dict):
    path.write_text(yaml.safe_dump(space, allow_unicode=True), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def grid_study(run_dir, dev, tmp_path_factory):
    """A 2 x 2 grid in which the length penalty does nothing (greedy): 4 trials, 2 distinct settings."""
    space = write_space(
        tmp_path_factory.mktemp("space") / "grid.yaml",
        {"generation.no_repeat_ngram_size": [2, 3], "generation.length_penalty": [0.5, 1.0]},
    )
    result = tune(run_dir, dev, space_path=space, progress=False)
    return result, space


def read_csv(path):
    with open(path, encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.slow
def test_grid_study_completes_enumerates_its_product_and_caches(grid_study, run_dir):
    result, _ = grid_study
    out = run_dir / "tune"
    assert all((out / name).is_file() for name in TUNE_OUTPUTS)
    assert result.grid and len(result.trials) == 4
    seen = sorted(
        (t["settings"]["generation.no_repeat_ngram_size"], t["settings"]["generation.length_penalty"])
        for t in result.trials
    )
    assert seen == sorted(itertools.product([2, 3], [0.5, 1.0]))  # exactly the product, each once
    # num_beams=1: the length penalty changes nothing, so only no_repeat_ngram_size=2 is ever generated, once;
    # =3 is the untuned config, evaluated before the trials
    generated = [t for t in result.trials if not t["cached"]]
    assert [t["settings"]["generation.no_repeat_ngram_size"] for t in generated] == [2]
    rows = read_csv(out / TUNE_TRIALS_FILE)
    assert rows[0]["trial"] == "untuned" and len(rows) == 5
    assert sum(bool(r["heldout_score"]) for r in rows) == 2  # the untuned config and the best trial
    report = (out / "tune.md").read_text(encoding="utf-8")
    assert "Held-out comparison" in report and "tune_history.png" in report


@pytest.mark.slow
def test_best_yaml_reproduces_the_best_trial_through_predict(grid_study, run_dir, dev, tmp_path, monkeypatch, capsys):
    result, _ = grid_study
    out = run_dir / "tune"
    best = yaml.safe_load((out / "best.yaml").read_text(encoding="utf-8"))
    assert best["base"] == "../config.yaml"
    assert best["generation"] == {"no_repeat_ngram_size": result.best["settings"]["generation.no_repeat_ngram_size"]}
    assert result.best["tuning"] > result.untuned["tuning"]  # the tiny model scores above 0 with the n-gram ban at 2
    # `dialsum run best.yaml` reads the run's config with the tuned settings over it
    merged = load_config(out / "best.yaml")
    assert merged.generation.no_repeat_ngram_size == best["generation"]["no_repeat_ngram_size"]
    assert merged.model.name_or_path == str(run_dir / "model") and merged.generation.max_new_tokens == 10
    # `dialsum predict --config best.yaml` on the tuning rows scores exactly what the trial scored
    tuning_ids = [r["fname"] for r in read_csv(out / TUNE_SPLIT_FILE) if r["half"] == "tuning"]
    dialogues = {d.id: d for d in load_dialogues(dev)}
    tuning = [dialogues[i] for i in tuning_ids]
    source = {r["fname"]: r for r in read_csv(dev)}
    subset = tmp_path / "tuning.csv"
    with open(subset, "w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(source[tuning_ids[0]]))
        writer.writeheader()
        writer.writerows(source[i] for i in tuning_ids)  # in the data's order, as the trials saw them
    predictions = tmp_path / "predictions.csv"
    argv = ["predict", "--model", run_dir, "--data", subset, "--output", predictions, "--config", out / "best.yaml"]
    run_cli(monkeypatch, argv)
    summaries = [r["summary"] for r in read_csv(predictions)]
    scores, _ = score_dialogues(summaries, tuning, load_config(run_dir / "config.yaml").evaluation)
    assert scores["final_score"] == result.best["tuning"]


@pytest.mark.slow
def test_tuning_and_heldout_rows_are_disjoint_and_stratified(grid_study, dev):
    result, _ = grid_study
    tuning, heldout = set(result.split["tuning"]), set(result.split["heldout"])
    dialogues = load_dialogues(dev)
    assert not tuning & heldout and tuning | heldout == {d.id for d in dialogues}
    for topic in {d.topic for d in dialogues}:
        members = [d.id for d in dialogues if d.topic == topic]
        assert abs(sum(i in tuning for i in members) - sum(i in heldout for i in members)) <= 1


@pytest.mark.slow
def test_killed_study_resumes_without_repeating_a_trial(run_dir, dev, tmp_path):
    space = write_space(
        tmp_path / "tpe.yaml",
        {"generation.repetition_penalty": {"low": 1.0, "high": 1.3}, "generation.no_repeat_ngram_size": [2, 3]},
    )
    out = tmp_path / "out"

    def kill(study, trial):  # the process dies right after its first trial
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        tune(run_dir, dev, space_path=space, trials=3, output_dir=out, progress=False, callbacks=[kill])
    storage = f"sqlite:///{out / 'study.db'}"
    first = optuna.load_study(study_name="tune", storage=storage)
    (done,) = first.get_trials()
    assert done.state == optuna.trial.TrialState.COMPLETE
    split = first.user_attrs["split"]
    # resumed with another --seed: the stored split wins; the finished trial is kept, two more run
    result = tune(run_dir, dev, space_path=space, trials=3, output_dir=out, seed=7, progress=False)
    trials = optuna.load_study(study_name="tune", storage=storage).get_trials()
    assert [t.number for t in trials] == [0, 1, 2]
    assert trials[0].datetime_complete == done.datetime_complete and trials[0].value == done.value
    assert result.split["tuning"] == split["tuning"] and result.split["heldout"] == split["heldout"]
    again = tune(run_dir, dev, space_path=space, trials=3, output_dir=out, progress=False)  # nothing left to do
    assert len(again.trials) == 3
    # another space on the same study: one line
    other = write_space(tmp_path / "other.yaml", {"generation.no_repeat_ngram_size": [2, 4]})
    with pytest.raises(Exception, match="started with another space"):
        tune(run_dir, dev, space_path=other, trials=3, output_dir=out, progress=False)


def run_cli(monkeypatch, argv):
    from dialsum.cli import main

    monkeypatch.setattr(sys, "argv", ["dialsum", *map(str, argv)])
    try:
        main()
    except SystemExit as exit:
        return exit.code
    return 0


BAD_SPACES = [
    ({"generation.num_beam": [1, 2]}, "unknown key 'generation.num_beam' (did you mean 'generation.num_beams'?)"),
    ({"training.learning_rate": [1e-5, 2e-5]}, "'training.learning_rate' is not a decoding setting"),
    ({"generation.num_beams": []}, "generation.num_beams: empty list of values"),
    ({"generation.length_penalty": {"low": 1.5, "high": 0.3}}, "empty range (low 1.5 > high 0.3)"),
    ({"generation.num_beams": [4], "generation.length_penalty": {"low": 1.0, "high": 1.0}}, "no free parameter"),
    ({}, "no free parameter"),
    ({"generation.num_beams": [0, 2]}, "generation.num_beams"),
    ({"prompt.question": "요약해 주세요."}, "expected a list of texts"),
    ({"generation.length_quantile": {"low": 0.5, "high": 0.9}}, "applies under generation.max_new_tokens=auto"),
]


@pytest.mark.parametrize(("space", "message"), BAD_SPACES, ids=[m[:30] for _, m in BAD_SPACES])
def test_bad_space_is_one_line_exit_2_nothing_written(space, message, tmp_path, monkeypatch, capsys, run_dir, dev):
    path = write_space(tmp_path / "space.yaml", space)
    out = tmp_path / "out"
    argv = ["tune", run_dir, "--data", dev, "--space", path, "--output-dir", out, "--trials", 2]
    assert run_cli(monkeypatch, argv) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0], lines
    assert str(path) in lines[0] and not out.exists()


@pytest.mark.slow
def test_pruning_slice_and_rest_are_whole_batches_of_one_call(run_dir, dev):
    """predict_split sorts by input length and batches; a trial's slice and rest must each be whole batches of the
    one-call order, so predicting them apart generates what `predict` over all tuning rows does."""
    from dialsum.encode import encode_inference_inputs
    from dialsum.models import load_tokenizer, resolve_inference_source
    from dialsum.predict import Predictor
    from dialsum.tune import _Trials

    source = resolve_inference_source(run_dir)
    config = config_from_dict(source.config.to_dict(), ["generation.batch_size=3"])
    rows = load_dialogues(dev)[:11]  # 4 batches, the last one short
    predictor = Predictor(source, tokenizer=load_tokenizer(source.model_dir, config))
    first, rest = _Trials(predictor, config, rows, [], progress=False).slices(config)
    inputs, _ = encode_inference_inputs(predictor.tokenizer, rows, config, "causal")
    order = sorted(range(len(rows)), key=lambda i: len(inputs[i]), reverse=True)
    batches = [set(order[s : s + 3]) for s in range(0, len(order), 3)]
    assert first and rest and sorted(first + rest) == list(range(len(rows)))
    assert all(batch <= set(first) or batch <= set(rest) for batch in batches)
    assert [b for b in batches if b <= set(first)] == batches[::4]  # every 4th batch: the slice spans all lengths


def test_a_fragment_applies_over_the_run_config_prompt_included(run_dir, tmp_path):
    """best.yaml may carry prompt texts: as a fragment they apply over the run's config (a full --config would keep
    the run's prompt), and `base:` makes it a whole config for `dialsum run`."""
    from dialsum.config import fragment_overrides
    from dialsum.models import resolve_inference_source

    best = tmp_path / "best.yaml"
    best.write_text(
        yaml.safe_dump(
            {"base": str(run_dir / "config.yaml"), "generation": {"num_beams": 4}, "prompt": {"question": "요약:"}},
            allow_unicode=True,
        ),
        encoding="utf-8",
    )
    config = resolve_inference_source(run_dir, None, fragment_overrides(best)).config
    assert config.prompt.question == "요약:" and config.generation.num_beams == 4
    assert config.generation.max_new_tokens == 10  # the rest is the run's
    whole = load_config(best)
    assert whole.prompt.question == "요약:" and whole.model.name_or_path == str(run_dir / "model")
    assert fragment_overrides(run_dir / "config.yaml") is None  # a full config stays a config
    bad = tmp_path / "bad.yaml"
    bad.write_text("generation:\n  num_beam: 2\n", encoding="utf-8")
    with pytest.raises(Exception, match="unknown config key 'generation.num_beam'"):
        fragment_overrides(bad)


def test_outputs_of_another_study_are_not_replaced_without_overwrite(tmp_path, monkeypatch, capsys, run_dir, dev):
    space = write_space(tmp_path / "space.yaml", {"generation.no_repeat_ngram_size": [2, 3]})
    out = tmp_path / "out"
    out.mkdir()
    (out / TUNE_TRIALS_FILE).write_text("kept\n", encoding="utf-8")
    argv = ["tune", run_dir, "--data", dev, "--space", space, "--output-dir", out, "--study", "new"]
    assert run_cli(monkeypatch, argv) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and "already exists; pass --overwrite" in lines[0], lines
    assert sorted(p.name for p in out.iterdir()) == [TUNE_TRIALS_FILE]  # no study.db either
    assert (out / TUNE_TRIALS_FILE).read_text(encoding="utf-8") == "kept\n"


def test_default_space_and_what_a_trial_changes(tmp_path):
    from dialsum.tune_space import apply_settings, canonical, default_space

    fixed = config_from_dict({"model": {"name_or_path": "m"}, "data": {"train": str(SAMPLE / "train.csv")}})
    keys = default_space(fixed).keys
    assert keys == [
        "generation.num_beams",
        "generation.length_penalty",
        "generation.repetition_penalty",
        "generation.no_repeat_ngram_size",
    ]
    rule = {"buckets": [{"max_chars": None, "limit": 40, "n": 5}], "global_limit": 40, "quantile": 0.95}
    auto = config_from_dict(
        fixed.to_dict(), ["generation.max_new_tokens=auto", f"generation.length_rule={json.dumps(rule)}"]
    )
    assert default_space(auto).keys[-1] == "generation.length_quantile"
    # a changed quantile drops the stored rule (refitted on data.train); an unchanged one keeps it
    assert apply_settings(auto, {"generation.length_quantile": 0.8}).generation.length_rule is None
    assert apply_settings(auto, {"generation.length_quantile": 0.95}).generation.length_rule == rule
    # greedy: the length penalty changes nothing, so it is not part of the settings' identity
    assert canonical({"generation.num_beams": 1, "generation.length_penalty": 0.5}, fixed) == {
        "generation.num_beams": 1
    }
    assert "generation.length_penalty" in canonical(
        {"generation.num_beams": 4, "generation.length_penalty": 0.5}, fixed
    )
