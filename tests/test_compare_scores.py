"""`dialsum compare` under every scheme: the scheme and analyzer named, the headline's interval, the paired bootstrap
of the headline difference against the first run, refused for other rows or schemes. No model: the runs' dev files
are scored by hand from baselines."""

from __future__ import annotations

import json

import pytest

from conftest import SAMPLE
from dialsum.compare import compare_runs
from dialsum.data import load_dialogues
from dialsum.schemes import get_scheme, score_dialogues
from dialsum.writer import write_dict_rows
from test_report import write_run


def _scored_run(root, name, scheme, make, rows=None):
    """A run directory whose dev_scores.json and dev_per_sample.csv are `make`'s predictions under `scheme`."""
    from dialsum.config import config_from_dict

    run = write_run(root, name)
    dialogues = [d for d in load_dialogues(SAMPLE / "dev.csv") if d.references][:rows]
    predictions = [make(d) for d in dialogues]
    evaluation = config_from_dict({"model": {"name_or_path": "x"}, "evaluation": {"scheme": scheme}}).evaluation
    scores, per_row = score_dialogues(predictions, dialogues, evaluation)
    (run / "dev_scores.json").write_text(json.dumps(scores, ensure_ascii=False))
    examples = [
        {"id": d.id, "prediction": p, "reference": d.references[0], **row, "topic": d.topic or ""}
        for d, p, row in zip(dialogues, predictions, per_row)
    ]
    write_dict_rows(run / "dev_per_sample.csv", examples)
    return run, scores, per_row


def first(d):
    return d.turns[0].utterance


def first_two(d):
    return " ".join(t.utterance for t in d.turns[:2])


@pytest.mark.parametrize("scheme", ["kiwi", "dialogsum", "dcs"])
def test_compare_pairs_runs_on_the_same_rows_and_scheme_and_refuses_the_rest(scheme, tmp_path):
    if scheme != "kiwi":
        pytest.importorskip("mecab")
    other_scheme = "dialogsum" if scheme == "kiwi" else "kiwi"
    runs = tmp_path / "runs"
    a, a_scores, a_rows = _scored_run(runs, "a", scheme, first)
    same, _, _ = _scored_run(runs, "same", scheme, first)
    b, b_scores, b_rows = _scored_run(runs, "b", scheme, first_two)
    fewer, _, _ = _scored_run(runs, "fewer", scheme, first_two, rows=6)
    other, _, _ = _scored_run(runs, "other", other_scheme, first_two)
    out = tmp_path / "cmp"
    markdown = compare_runs([a, same, b, fewer, other], out).read_text(encoding="utf-8")
    data = json.loads((out / "compare.json").read_text(encoding="utf-8"))
    paired = data["paired"]
    key = get_scheme(scheme).rank_key(a_scores)
    assert paired["key"] == key and paired["baseline"] == "a"
    first_entry, itself, better, short, elsewhere = paired["runs"]
    assert first_entry == {"baseline": True}
    # a run against an identical one: exactly 0 [0, 0]
    assert (itself["difference"], itself["low"], itself["high"], itself["better"]) == (0.0, 0.0, 0.0, 0.0)
    expected = sum(rb[key] - ra[key] for ra, rb in zip(a_rows, b_rows)) / len(a_rows)
    assert better["difference"] == pytest.approx(expected)
    assert better["low"] <= better["difference"] <= better["high"] and 0.0 <= better["better"] <= 1.0
    assert better["difference"] == pytest.approx(b_scores[key] - a_scores[key])  # the corpus score's difference
    assert "other dev rows (6 vs 10" in short["refused"]
    assert elsewhere["refused"] == f"scored under {other_scheme}, the first run under {scheme}"
    # the table names the scheme and the analyzer, and never ranks runs under different schemes (no bold)
    assert f"| dev scheme | {scheme} | {scheme} | {scheme} | {scheme} | {other_scheme} |" in markdown
    assert a_scores["analyzer"] in markdown and "+0.00 [+0.00, +0.00]" in markdown
    assert "refused: scored under" in markdown and "different schemes" in markdown
    results = markdown.split("## Results")[1].split("## Notes")[0]
    assert not [line for line in results.splitlines() if line.startswith("| dev ") and "**" in line]
    assert f"the headline is the {get_scheme(scheme).headline_label}" in markdown


def test_compare_of_one_scheme_bolds_the_better_headline_and_says_the_leaderboard_number(tmp_path):
    pytest.importorskip("mecab")
    runs = tmp_path / "runs"
    a, a_scores, _ = _scored_run(runs, "a", "dialogsum", first)
    b, b_scores, _ = _scored_run(runs, "b", "dialogsum", first_two)
    markdown = compare_runs([a, b], tmp_path / "cmp").read_text(encoding="utf-8")
    label = "dev leaderboard final score (mean of ROUGE-1/2/L F1)"
    row = next(line for line in markdown.splitlines() if line.startswith(f"| {label} |"))
    best = max((a_scores, b_scores), key=lambda s: s["final_score"])
    assert f"**{best['final_score']:.2f}**" in row
    assert "The ROUGE sum beside it is the sum of the three, not the leaderboard's number." in markdown
