"""The error-analysis pages: what they hold (unit tests) and what a person sees in a real browser."""

from __future__ import annotations

import csv
import json
import re
import subprocess
import sys

import pytest

from browser import chromium_page, save_screenshot
from conftest import ROOT, SAMPLE
from dialsum.data import Dialogue, Turn
from dialsum.htmlreport import page_rows, report_page, segments

HOSTILE = "<script>window.pwned=1</script> & \"quoted\" 'single' <b>bold</b>"


def test_segments_mark_matches_tags_and_masks():
    text = "#Person1#이 #PhoneNumber#로 전화한다"
    pieces = segments(text, [(text.index("로"), text.index("로") + 1)])
    assert "".join(p for p, _ in pieces) == text  # nothing lost or added
    assert ["#Person1#", "tag"] in pieces and ["#PhoneNumber#", "mask"] in pieces
    assert ["로", "m"] in pieces


def test_the_data_block_cannot_close_its_script_element():
    """Mutation caught: json.dumps alone lets '</script>' inside a dialogue end the data block early."""
    summary = {"scheme": "kiwi", "analyzer": "Kiwi", "final_score": 1.0, "rouge1": 1.0, "rouge2": 1.0, "rougeL": 1.0}
    examples = [{"id": "x", "prediction": HOSTILE + "</script><script>alert(1)</script>", "reference": "정답"}]
    page = report_page("t", summary, examples, {})
    block = re.search(r'<script type="application/json" id="report-data">(.*?)</script>', page, re.S).group(1)
    assert "<" not in block and ">" not in block and "&" not in block.replace("\\u0026", "")
    assert HOSTILE in "".join(p for p, _ in json.loads(block)["rows"][0]["texts"][0][0])


def test_rows_carry_flags_turns_and_the_cut():
    dialogue = Dialogue(
        "d1", [Turn("#Person1#", "안녕"), Turn("#Person2#", "네"), Turn("#Person1#", "잘 가")], "인사", ["인사를 한다."]
    )
    example = {"id": "d1", "prediction": "", "reference": "인사를 한다.", "final_score": 0.0, "turns_cut": 2.0}
    (row,) = page_rows([example], {"d1": dialogue}, "kiwi", score_keys=["final_score"])
    assert row["flags"]["empty"] and row["flags"]["trimmed"] and not row["flags"]["degenerate"]
    assert row["turns_cut"] == 2 and len(row["turns"]) == 3 and row["topic"] == "인사"
    assert row["values"]["final_score"] == 0.0


def _dialsum(*args):
    return subprocess.run(
        [sys.executable, "-m", "dialsum.cli", *map(str, args)], capture_output=True, text=True, cwd=ROOT
    )


@pytest.fixture(scope="module")
def hostile_page(tmp_path_factory):
    """`dialsum evaluate --html` on a dev file whose texts hold markup, ampersands and quotes, and an empty
    prediction: no model needed."""
    folder = tmp_path_factory.mktemp("hostile")
    rows = list(csv.DictReader((SAMPLE / "dev.csv").open(encoding="utf-8")))
    rows[0]["dialogue"] = f"#Person1#: {HOSTILE}\n#Person2#: 네."
    rows[0]["summary"] = f"#Person1#은 {HOSTILE}라고 말한다."
    references = folder / "dev.csv"
    with references.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    predictions = folder / "pred.csv"
    with predictions.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["fname", "summary"])
        for i, row in enumerate(rows):
            writer.writerow([row["fname"], "" if i == 1 else (HOSTILE if i == 0 else row["summary"][: 10 + 5 * i])])
    page = folder / "report.html"
    done = _dialsum("evaluate", "--predictions", predictions, "--references", references, "--html", page)
    assert done.returncode == 0, done.stderr[-2000:]
    return page, rows


@pytest.mark.slow
def test_the_page_sorts_filters_searches_and_shows_hostile_text_as_text(hostile_page, tmp_path):
    path, rows = hostile_page
    with chromium_page() as page:
        page.goto(path.as_uri())
        page.wait_for_selector("body[data-ready='1']")
        samples = page.locator("#rows tbody tr.sample")
        assert samples.count() == len(rows)  # every dev dialogue
        assert page.evaluate("window.pwned") is None  # the markup in the data never ran
        first = samples.first.inner_text()
        assert "<script>window.pwned=1</script>" in first and '& "quoted"' in first and "<b>bold</b>" in first
        assert "(empty)" in page.locator("#rows tbody tr.sample[data-id='dev_1']").inner_text()
        # sorting by a score puts the lowest first; again, the highest
        page.click("#rows th[data-key='final_score']")
        shown = [float(t) for t in page.locator("#rows tbody td[data-key='final_score']").all_inner_texts()]
        assert shown == sorted(shown) and shown[0] == 0.0
        page.click("#rows th[data-key='final_score']")
        shown = [float(t) for t in page.locator("#rows tbody td[data-key='final_score']").all_inner_texts()]
        assert shown == sorted(shown, reverse=True)
        # a filter narrows the rows: only the empty prediction
        page.check("#flag-empty")
        assert samples.count() == 1 and samples.first.get_attribute("data-id") == "dev_1"
        page.uncheck("#flag-empty")
        # search by text, Korean included
        others = " ".join(r["dialogue"] + r["summary"] for r in rows[:3] + rows[4:])
        needle = next(w for w in sorted(rows[3]["summary"].split(), key=len, reverse=True) if w not in others)
        page.fill("#search", needle)
        assert samples.count() == 1 and samples.first.get_attribute("data-id") == rows[3]["fname"]
        assert page.locator("#count").inner_text().endswith(f"of {len(rows)} dialogues")
        page.fill("#search", "")
        # a row opens its dialogue, speaker tags shown as tags
        samples.first.click()
        assert page.locator("tr.details .tag").first.inner_text().startswith("#Person")
        save_screenshot(page, tmp_path, "report-hostile.png")


@pytest.mark.slow
def test_a_demo_run_writes_report_html_and_compare_writes_compare_html(tmp_path):
    runs = []
    for name, rate in (("a", "3e-3"), ("b", "1e-3")):
        run_dir = tmp_path / name
        done = _dialsum(
            "run",
            "configs/demo.yaml",
            "--output-dir",
            run_dir,
            "--set",
            "training.max_steps=4",
            "--set",
            "training.eval_steps=4",
            "--set",
            "training.save_steps=4",
            "--set",
            f"training.learning_rate={rate}",
            "--set",
            "generation.max_new_tokens=16",
        )
        assert done.returncode == 0, done.stderr[-3000:]
        assert (run_dir / "report.html").is_file()
        runs.append(run_dir)
    done = _dialsum("compare", *runs, "--output", tmp_path / "cmp")
    assert done.returncode == 0, done.stderr[-3000:]
    dev = list(csv.DictReader((SAMPLE / "dev.csv").open(encoding="utf-8")))
    with chromium_page() as page:
        page.goto((runs[0] / "report.html").as_uri())
        page.wait_for_selector("body[data-ready='1']")
        assert page.locator("#rows tbody tr.sample").count() == len(dev)
        assert page.locator(".charts svg").count() == 4  # by topic, by dialogue length, by summary length, scatter
        save_screenshot(page, tmp_path, "report-demo.png")
        page.goto((tmp_path / "cmp" / "compare.html").as_uri())
        page.wait_for_selector("body[data-ready='1']")
        assert page.locator("#rows tbody tr.sample").count() == len(dev)
        spread = [float(t) for t in page.locator("#rows tbody td[data-key='spread']").all_inner_texts()]
        assert spread == sorted(spread, reverse=True)  # where the runs disagree most comes first
        assert "better on" in page.locator("body").inner_text()
        save_screenshot(page, tmp_path, "compare-demo.png")
