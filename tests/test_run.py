"""End to end through the CLI: `dialsum run`, `predict`, `evaluate`, `screen`, `compare`, and one-line errors."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, SAMPLE, shared_file

pytestmark = pytest.mark.slow


def dialsum(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "dialsum.cli", *map(str, args)], capture_output=True, text=True, cwd=cwd)


def one_line_error(result) -> str:
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """The README's main command, shortened: the demo config with fewer steps."""
    run_dir = tmp_path_factory.mktemp("runs") / "demo"
    result = dialsum("run", "configs/demo.yaml", "--output-dir", run_dir,
                     "--set", "training.max_steps=12", "--set", "training.eval_steps=6", "--set", "training.save_steps=6")
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir


def test_run_writes_submission_scores_and_report(demo_run):
    test_ids = [row["fname"] for row in csv.DictReader((SAMPLE / "test.csv").open(encoding="utf-8"))]
    with (demo_run / "submission.csv").open(encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["", "fname", "summary"]  # the organizers' sample_submission format
    assert [r[1] for r in rows[1:]] == test_ids and [r[0] for r in rows[1:]] == [str(i) for i in range(len(test_ids))]
    scores = json.loads((demo_run / "dev_scores.json").read_text())
    assert {"rouge1", "rouge2", "rougeL", "rouge_sum", "final_score", "foreign_rate"} <= scores.keys()
    assert scores["foreign_rate"] == 0.0
    report = (demo_run / "report.md").read_text(encoding="utf-8")
    assert "plots/loss.png" in report and (demo_run / "plots" / "loss.png").stat().st_size > 0
    assert sum(1 for r in csv.DictReader((demo_run / "metrics.jsonl").open()) ) >= 0
    metrics = [json.loads(line) for line in (demo_run / "metrics.jsonl").read_text().splitlines()]
    assert any("eval_loss" in row for row in metrics) and any("loss" in row for row in metrics)


def test_run_directory_is_never_clobbered(demo_run):
    before = (demo_run / "summary.json").read_text()
    line = one_line_error(dialsum("train", "configs/demo.yaml", "--output-dir", demo_run))
    assert str(demo_run) in line and "--resume" in line
    assert (demo_run / "summary.json").read_text() == before


def test_predict_then_evaluate_round_trip(demo_run, tmp_path):
    predictions = tmp_path / "dev_preds.csv"
    result = dialsum("predict", "--model", demo_run, "--data", SAMPLE / "dev.csv", "--output", predictions,
                     "--set", "generation.max_new_tokens=8")
    assert result.returncode == 0, result.stderr[-2000:]
    ids = [row["fname"] for row in csv.DictReader((SAMPLE / "dev.csv").open(encoding="utf-8"))]
    assert [row["fname"] for row in csv.DictReader(predictions.open(encoding="utf-8"))] == ids
    out = tmp_path / "scores.json"
    per_sample = tmp_path / "rows.csv"
    result = dialsum("evaluate", "--predictions", predictions, "--references", SAMPLE / "dev.csv", "--json", out, "--per-sample", per_sample)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "ROUGE-1" in result.stdout
    assert json.loads(out.read_text())["n"] == len(ids)
    assert len(list(csv.DictReader(per_sample.open(encoding="utf-8")))) == len(ids)


def test_evaluate_identical_is_100_and_id_mismatch_is_one_line(tmp_path):
    dev = SAMPLE / "dev.csv"
    rows = list(csv.DictReader(dev.open(encoding="utf-8")))
    perfect = tmp_path / "perfect.csv"
    with perfect.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["fname", "summary"])
        writer.writerows([r["fname"], r["summary"]] for r in rows)
    out = tmp_path / "s.json"
    assert dialsum("evaluate", "--predictions", perfect, "--references", dev, "--json", out).returncode == 0
    assert json.loads(out.read_text())["rouge1"] == pytest.approx(100.0)
    partial = tmp_path / "partial.csv"
    partial.write_text("fname,summary\n" + "\n".join(f"{r['fname']},x" for r in rows[:-1]) + "\n", encoding="utf-8")
    line = one_line_error(dialsum("evaluate", "--predictions", partial, "--references", dev))
    assert rows[-1]["fname"] in line


def test_bad_data_is_one_line_naming_file_row_field(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("fname,dialogue,summary,topic\nd0,\"#Person1#: 안녕\",요약,인사\nd1,,요약,인사\n", encoding="utf-8")
    line = one_line_error(dialsum("inspect", "configs/demo.yaml", "--data", bad))
    assert "bad.csv" in line and "row 2" in line and "dialogue" in line
    run_dir = tmp_path / "never-created"
    line = one_line_error(dialsum("train", "configs/demo.yaml", "--set", f"data.train={bad}", "--output-dir", run_dir))
    assert "row 2" in line and not run_dir.exists()  # fix the file and re-run: nothing to clean up
    cp949 = tmp_path / "excel.csv"
    cp949.write_bytes("fname,dialogue\nd0,#Person1#: 안녕하세요\n".encode("cp949"))
    line = one_line_error(dialsum("predict", "--model", "tiny:llama", "--data", cp949, "--output", tmp_path / "o.csv",
                                  "--config", "configs/demo.yaml"))
    assert "excel.csv" in line and "UTF-8" in line


def test_inspect_shows_trained_tokens_and_padding_waste():
    result = dialsum("inspect", "configs/demo.yaml", "--n", "1")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "padding waste" in result.stdout and "trained" in result.stdout
    assert "[Question]" in result.stdout and "\ufffd" not in result.stdout  # Hangul decoded whole, not per byte token


def test_screen_lead_baseline_on_real_dev():
    """`lead` (first utterance) is the floor every screening table shows; measured on the real dev set."""
    from dialsum.run import screen

    results = screen(["lead"], shared_file("data/dialogsum-ko/dev.csv"))
    lead = results[0]
    assert lead["n"] == 499
    # Computed independently (rouge-score with a tokenizer of Kiwi forms, first utterance without its tag). The
    # near variants score outside +-0.05: 2nd utterance 18.17/3.92/14.67, last 17.38/3.56/14.43, first with its
    # tag 21.42/4.77/17.96, first two 24.36/6.44/18.70.
    assert lead["rouge1"] == pytest.approx(18.538, abs=0.05)
    assert lead["rouge2"] == pytest.approx(4.982, abs=0.05)
    assert lead["rougeL"] == pytest.approx(15.435, abs=0.05)


def test_compare_two_real_runs(demo_run, tmp_path):
    other = tmp_path / "lr"
    result = dialsum("train", "configs/demo.yaml", "--output-dir", other, "--set", "training.max_steps=4",
                     "--set", "training.learning_rate=1e-4", "--set", "data.dev=null")
    assert result.returncode == 0, result.stderr[-2000:]
    out = tmp_path / "cmp"
    result = dialsum("compare", demo_run, other, tmp_path / "missing", "--output", out)
    assert result.returncode == 0, result.stderr[-2000:]
    table = json.loads((out / "compare.json").read_text())
    text = (out / "compare.md").read_text()
    assert "training.learning_rate" in text and "training.max_steps" in text and "training.packing" not in text
    assert "missing" in text  # the broken path is reported, not fatal
    assert (out / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert table


def test_unloadable_model_is_one_line(tmp_path):
    line = one_line_error(dialsum("predict", "--model", tmp_path / "no-such-model", "--data", SAMPLE / "test.csv",
                                  "--output", tmp_path / "o.csv", "--config", "configs/demo.yaml"))
    assert "no-such-model" in line and not (tmp_path / "o.csv").exists()
