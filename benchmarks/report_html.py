"""The error-analysis pages at scale: file size, the time to build them, and the time a browser takes to open and
sort them (headless Chromium, the page's own script).

    python benchmarks/report_html.py [--rows 5000]

Four runs' worth of predictions without a model: the first, second, last and longest utterance of each real dev
dialogue (the bundled sample when ../shared is absent). Pages: compare.html of the 4 runs on every dev dialogue, and
report.html of one run over `--rows` dialogues (the dev set repeated), the size of a real test set.
"""

from __future__ import annotations

import argparse
import time

import common  # noqa: F401  (offline settings)
from common import real_dev_or_sample
from dialsum.config import EvaluationSettings
from dialsum.data import Dialogue, load_dialogues
from dialsum.htmlcompare import compare_page
from dialsum.htmlreport import report_page
from dialsum.schemes import score_dialogues


def candidates(dialogue: Dialogue) -> list[str]:
    turns = [t.utterance for t in dialogue.turns if t.utterance] or [""]
    return [turns[0], turns[min(1, len(turns) - 1)], turns[-1], max(turns, key=len)]


def examples_of(dialogues: list[Dialogue], predictions: list[str]):
    scores, rows = score_dialogues(predictions, dialogues, EvaluationSettings())
    examples = [
        {"id": d.id, "prediction": p, "reference": d.references[0], **row, "topic": d.topic or ""}
        for d, p, row in zip(dialogues, predictions, rows)
    ]
    return scores, examples


def open_and_sort(path) -> tuple[float, float]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path="/usr/bin/chromium", args=["--no-sandbox", "--disable-gpu"]
        )
        page = browser.new_page()
        started = time.perf_counter()
        page.goto(path.as_uri())
        page.wait_for_selector("body[data-ready='1']")
        opened = time.perf_counter() - started
        started = time.perf_counter()
        page.click("#rows th[data-key]")
        page.wait_for_selector("#rows tbody tr.sample")
        sorted_in = time.perf_counter() - started
        browser.close()
    return opened, sorted_in


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=5000)
    args = parser.parse_args()
    from pathlib import Path
    from tempfile import mkdtemp

    out = Path(mkdtemp(prefix="dialsum-html-"))
    dev = [d for d in load_dialogues(real_dev_or_sample("dev.csv")) if d.references]
    by_id = {d.id: d for d in dev}
    runs = []
    for k, name in enumerate(("first", "second", "last", "longest")):
        summary, examples = examples_of(dev, [candidates(d)[k] for d in dev])
        runs.append({"name": name, "summary": summary, "examples": examples})
    started = time.perf_counter()
    compare = out / "compare.html"
    compare.write_text(compare_page(runs, by_id), encoding="utf-8")
    build_compare = time.perf_counter() - started

    repeated = [
        Dialogue(f"{d.id}-{i}", d.turns, d.topic, d.references) for i in range(args.rows // len(dev) + 1) for d in dev
    ][: args.rows]
    summary, examples = examples_of(repeated, [candidates(d)[0] for d in repeated])
    started = time.perf_counter()
    report = out / "report.html"
    report.write_text(report_page("scale", summary, examples, {d.id: d for d in repeated}), encoding="utf-8")
    build_report = time.perf_counter() - started

    print(f"{'page':<40} {'size':>9} {'build':>8} {'open':>7} {'sort':>7}")
    for label, path, built in (
        (f"compare.html, {len(dev)} rows x 4 runs", compare, build_compare),
        (f"report.html, {len(repeated)} rows", report, build_report),
    ):
        opened, sorted_in = open_and_sort(path)
        size = path.stat().st_size / 2**20
        print(f"{label:<40} {size:>7.2f}MB {built:>7.2f}s {opened:>6.2f}s {sorted_in:>6.2f}s")


if __name__ == "__main__":
    main()
