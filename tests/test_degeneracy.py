"""Degenerate output is flagged beside the score: the demo's tag spam is, real references and lead baselines are not."""

from __future__ import annotations

import json

import pytest

from conftest import SAMPLE, shared_file
from dialsum.data import load_dialogues
from dialsum.degeneracy import degeneracy, describe_degeneracy, is_degenerate
from dialsum.schemes import score_scheme

# Written by the demo's tiny model (configs/demo.yaml, 100 steps): dev_predictions.csv, rows dev_1 and dev_3.
DEMO_SPAM = [
    "#Person1#은#은#은 미순지지 않을 수도에에에 왔고, #Person2#는#는#는#에게#에게#에게 이 이 이가를를를 예약한다.",
    "#Person1#은#은#은 #Person2#는#는#는#에게 이 이 이가를를를한다.",
]


def test_demo_tag_spam_is_flagged_and_sample_references_are_not():
    assert all(is_degenerate(text) for text in DEMO_SPAM)
    references = [d.references for d in load_dialogues(SAMPLE / "dev.csv")]
    assert not any(is_degenerate(r) for row in references for r in row)
    summary, rows = degeneracy(DEMO_SPAM * 5, references)
    assert summary["degenerate"] and summary["degenerate_rows"] == 10 and all(r["degenerate"] for r in rows)
    assert summary["stutter"] > 0.2 > summary["stutter_references"]
    assert "DEGENERATE" in describe_degeneracy({"degeneracy": summary, "n": 10})
    clean, _ = degeneracy([r[0] for r in references], references)
    assert not clean["degenerate"] and clean["degenerate_rows"] == 0
    assert "DEGENERATE" not in describe_degeneracy({"degeneracy": clean, "n": 10})


@pytest.mark.parametrize("relative", ["data/dialogsum-ko/dev.csv", "data/dialogsum-ko-2024/dev.csv"])
def test_no_real_reference_or_first_utterance_is_degenerate(relative):
    """Every real reference and every first utterance (the lead baseline) passes: the limits flag loops, not
    Korean. Catches a limit set too low (stutter 0.05 flags a reference; stray '#' 2 flags the 2024 dev row)."""
    dialogues = load_dialogues(shared_file(relative))
    assert not [r for d in dialogues for r in d.references if is_degenerate(r)]
    assert not [d.id for d in dialogues if is_degenerate(d.turns[0].utterance)]


def test_real_dcs_references_are_not_degenerate():
    records = json.loads(shared_file("data/korean-dcs/dev.json").read_text(encoding="utf-8"))
    assert not [r["id"] for r in records if is_degenerate(r["output"])]


@pytest.mark.parametrize("scheme", ["kiwi", "dialogsum", "dcs"])
def test_every_scheme_reports_degeneracy_and_flags_rows(scheme):
    pytest.importorskip("mecab") if scheme != "kiwi" else None
    references = [d.references for d in load_dialogues(SAMPLE / "dev.csv")][:4]
    predictions = [DEMO_SPAM[0], DEMO_SPAM[1], references[2][0], DEMO_SPAM[0]]
    summary, rows = score_scheme(predictions, references, scheme)
    assert [r["degenerate"] for r in rows] == [True, True, False, True]
    assert summary["degeneracy"]["degenerate"] and summary["degeneracy"]["degenerate_rows"] == 3


def test_console_and_report_say_plainly_when_degenerate():
    """The console table and report.md carry the figure beside the score, and a warning only when degenerate."""
    import io

    from rich.console import Console

    from dialsum.report import _dev_scores_section
    from dialsum.schemes import print_scheme_scores

    references = [d.references for d in load_dialogues(SAMPLE / "dev.csv")]
    spam, _ = score_scheme([DEMO_SPAM[i % 2] for i in range(10)], references)
    clean, _ = score_scheme([r[0] for r in references], references)
    for scores, degenerate in ((spam, True), (clean, False)):
        out = io.StringIO()
        print_scheme_scores(scores, console=Console(file=out, width=200))
        report = "\n".join(_dev_scores_section(scores))
        assert "degeneracy" in out.getvalue() and "| degeneracy |" in report
        assert ("predictions are DEGENERATE" in out.getvalue()) is degenerate
        assert ("Warning: the predictions are degenerate" in report) is degenerate
