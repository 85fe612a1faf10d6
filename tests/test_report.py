"""Reports: the compare table shows exactly what differs, plots are real PNGs, broken runs become notes,
report.md holds the best/worst examples and its plots."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from dialsum.compare import compare_runs
from dialsum.config import config_from_dict
from dialsum.plots import run_plots
from dialsum.report import md_cell, pick_examples, write_run_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def write_run(
    root: Path, name: str, *, learning_rate=2e-5, packing=True, spikes=((7, 2.31),), dev_scores=True, eval_rouge=False
) -> Path:
    """A run directory as train.py + `dialsum run` leave it, written by hand (no training)."""
    run_dir = root / name
    run_dir.mkdir(parents=True)
    config = config_from_dict(
        {
            "model": {"name_or_path": "tiny/llama"},
            "data": {"train": "data/train.csv", "dev": "data/dev.csv"},
            "training": {"learning_rate": learning_rate, "packing": packing, "max_steps": 20},
            "logging": {"steps": 2, "output_root": str(root)},
        }
    )
    (run_dir / "config.yaml").write_text(
        yaml.safe_dump(config.to_dict(), allow_unicode=True, sort_keys=False), encoding="utf-8"
    )
    (run_dir / "env.json").write_text(
        json.dumps({"started": "2025-01-01T00:00:00", "git_commit": "abc123", "device": "cpu"})
    )
    rows = []
    for step in range(2, 22, 2):
        rows.append(
            {
                "step": step,
                "epoch": step / 20,
                "loss": 3.0 - step * 0.1 * (learning_rate / 2e-5) ** 0.1,
                "grad_norm": 1.0 + (step == 8),
                "learning_rate": learning_rate * (1 - step / 20),
                "tokens_per_second": 900.0,
                "real_token_fraction": 1.0 if packing else 0.7,
                "real_tokens": 9000,
                "processed_tokens": 9000 if packing else 12857,
                "train_seconds": 10.0,
            }
        )
        if step % 10 == 0:
            row = {"step": step, "epoch": step / 20, "eval_loss": 2.5 - step * 0.05}
            if eval_rouge:
                row.update(eval_rouge1=0.3, eval_rouge2=0.1, eval_rougeL=0.25, eval_rouge_sum=0.65 + step / 100)
            rows.append(row)
    rows.append({"step": 20, "epoch": 1.0, "train_runtime": 101.0, "train_loss": 2.1})
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (run_dir / "grad_norm_spikes.jsonl").write_text(
        "".join(json.dumps({"step": s, "grad_norm": g}) + "\n" for s, g in spikes)
    )
    summary = {
        "run_dir": str(run_dir),
        "model_kind": "causal",
        "steps": 20,
        "epochs": 1.0,
        "train_seconds": 100.0,
        "tokens_per_second": 900.0 if packing else 630.0,
        "real_token_fraction": 1.0 if packing else 0.7,
        "final_train_loss": 1.23,
        "final_eval_loss": 1.5,
        "best_eval_loss": 1.5,
        "best_step": 20,
        "best_metric": "eval_loss",
        "effective_batch_size": 64,
        "world_size": 1,
        "grad_norm_threshold": 1.5,
        "effective_batch_unit": "examples",
        "examples_per_optimizer_step": 66.5 if packing else 64.0,
        "optimizer_steps_per_epoch": 20,
        "grad_norm_spikes": [list(s) for s in spikes],
        "grad_norm_max": max([2.0] + [g for _, g in spikes]),
    }
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    if dev_scores:
        scores = {
            "rouge1": 56.12 if packing else 54.01,
            "rouge2": 33.01,
            "rougeL": 47.02,
            "rouge_sum": 136.15,
            "final_score": 45.38,
            "foreign_rate": 1.2,
            "pred_len": 41.2,
            "ref_len": 44.0,
            "n": 499,
            "empty_predictions": 0,
        }
        (run_dir / "dev_scores.json").write_text(json.dumps(scores))
    return run_dir


def table_row(markdown: str, label: str) -> list[str]:
    """The cells (after the label) of the markdown table row that starts with `label`."""
    for line in markdown.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells and cells[0] == label:
            return cells[1:]
    raise AssertionError(f"no row {label!r} in:\n{markdown}")


def section(markdown: str, title: str) -> str:
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", markdown, re.S | re.M)
    assert match, f"no section {title!r}"
    return match.group(1)


def assert_png(path: Path) -> None:
    from PIL import Image

    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC, path
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size[0] > 100 and image.size[1] > 100


@pytest.fixture
def three_runs(tmp_path):
    runs = tmp_path / "runs"
    return [
        write_run(runs, "base", learning_rate=2e-5, packing=True),
        write_run(runs, "lr1e-4", learning_rate=1e-4, packing=True, spikes=((3, 4.5), (7, 2.2)), eval_rouge=True),
        write_run(runs, "nopack", learning_rate=2e-5, packing=False, spikes=()),
    ]


def test_compare_shows_exactly_the_differing_settings(three_runs, tmp_path):
    out = compare_runs(three_runs, tmp_path / "cmp")
    assert out == tmp_path / "cmp" / "compare.md"
    markdown = out.read_text(encoding="utf-8")
    settings = section(markdown, "Settings that differ")
    assert "| setting | base | lr1e-4 | nopack |" in settings
    assert table_row(settings, "training.learning_rate") == ["2e-05", "0.0001", "2e-05"]
    assert table_row(settings, "training.packing") == ["true", "true", "false"]
    setting_rows = [line.split("|")[1].strip() for line in settings.splitlines() if line.startswith("| ")][1:]
    assert setting_rows == ["training.learning_rate", "training.packing"]  # not max_steps, not output_root

    data = json.loads((tmp_path / "cmp" / "compare.json").read_text(encoding="utf-8"))
    assert [r["name"] for r in data["runs"]] == ["base", "lr1e-4", "nopack"]
    assert data["settings"] == {"training.learning_rate": [2e-5, 1e-4, 2e-5], "training.packing": [True, True, False]}
    assert data["metrics"]["dev_rouge1"] == [56.12, 56.12, 54.01]
    assert data["metrics"]["grad_norm_spikes"] == [1, 2, 0]
    # these runs have dev scores but no dev_per_sample.csv: compare.html is skipped, and says why
    assert data["notes"] == ["no compare.html: fewer than two runs have dev_per_sample.csv and dev_scores.json"]
    assert not (tmp_path / "cmp" / "compare.html").exists()


def test_compare_shows_metrics_per_run(three_runs, tmp_path):
    markdown = compare_runs(three_runs, tmp_path / "cmp").read_text(encoding="utf-8")
    results = section(markdown, "Results")
    assert table_row(results, "dev ROUGE-1") == ["**56.12**", "**56.12**", "54.01"]  # ties share the bold
    assert table_row(results, "dev ROUGE sum") == ["136.15"] * 3  # all equal: nothing bold
    assert table_row(results, "dev foreign-script rate") == ["1.20"] * 3
    assert table_row(results, "grad-norm spikes (> 1.5)") == ["1", "2", "**0**"]
    assert table_row(results, "grad-norm max") == ["2.310", "4.500", "**2.000**"]
    assert table_row(results, "tokens/s (real)") == ["**900.0**", "**900.0**", "630.0"]
    assert table_row(results, "real-token fraction") == ["**1.000**", "**1.000**", "0.700"]
    assert table_row(results, "train time (s)") == ["100.0"] * 3
    assert table_row(results, "best step") == ["20"] * 3
    assert table_row(results, "examples / optimizer step") == [
        "66.5",
        "66.5",
        "64.0",
    ]  # a packed and a padded run, fairly
    assert table_row(results, "optimizer steps / epoch") == ["20"] * 3


def test_compare_plots_are_real_pngs(three_runs, tmp_path):
    markdown = compare_runs(three_runs, tmp_path / "cmp").read_text(encoding="utf-8")
    for name in ("loss", "grad_norm", "learning_rate", "eval"):
        path = tmp_path / "cmp" / f"{name}.png"
        assert path.stat().st_size > 0
        assert_png(path)
        assert f"]({name}.png)" in markdown  # relative link, renders on GitHub

    import matplotlib.image

    assert matplotlib.image.imread(tmp_path / "cmp" / "grad_norm.png").shape[2] in (3, 4)


def test_eval_plot_only_when_logged(tmp_path):
    run = write_run(tmp_path / "runs", "a")
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows if "eval_loss" not in r))
    compare_runs([run], tmp_path / "cmp")
    assert not (tmp_path / "cmp" / "eval.png").exists()
    assert (tmp_path / "cmp" / "loss.png").is_file()


def test_broken_runs_become_notes_and_the_rest_compares(three_runs, tmp_path):
    base, lr, nopack = three_runs
    (nopack / "summary.json").unlink()
    with (lr / "metrics.jsonl").open("a") as handle:
        handle.write('{"step": 22, "loss": 1.0, "grad_no\n')  # killed mid-write
    (base / "dev_scores.json").write_text(json.dumps({"rouge1": 50.0}))  # partial scores
    missing = tmp_path / "runs" / "does-not-exist"

    out = compare_runs([base, lr, nopack, missing], tmp_path / "cmp")
    markdown = out.read_text(encoding="utf-8")
    notes = section(markdown, "Notes")
    assert f"{nopack}: no summary.json (incomplete run?)" in notes
    assert f"{lr}: metrics.jsonl: skipped 1 unreadable line(s) (line 14)" in notes
    assert f"{missing}: not a directory (left out)" in notes
    assert f"{base}: dev_scores.json has no rouge2, rougeL, rouge_sum, final_score, foreign_rate" in notes

    results = section(markdown, "Results")
    assert "does-not-exist" not in results
    assert table_row(results, "train time (s)") == ["100.0", "100.0", "—"]
    assert table_row(results, "dev ROUGE-2") == ["—", "33.01", "33.01"]
    assert table_row(section(markdown, "Settings that differ"), "training.packing") == ["true", "true", "false"]
    for name in ("loss", "grad_norm", "learning_rate"):
        assert_png(tmp_path / "cmp" / f"{name}.png")


def test_compare_survives_corrupt_json_and_no_runs(tmp_path):
    run = write_run(tmp_path / "runs", "bad")
    (run / "summary.json").write_text("{not json")
    (run / "config.yaml").write_text("model: [unclosed")
    out = compare_runs([run, tmp_path / "nothing"], tmp_path / "cmp")
    notes = section(out.read_text(encoding="utf-8"), "Notes")
    assert "summary.json is not readable JSON" in notes and "config.yaml is not readable YAML" in notes

    # no run at all is an error, not an empty comparison (issue 17: it used to exit 0 and write files)
    from dialsum.errors import RunDirError

    with pytest.raises(RunDirError, match="is a run directory"):
        compare_runs([tmp_path / "nothing"], tmp_path / "cmp-empty")
    assert not (tmp_path / "cmp-empty").exists()


def test_same_named_runs_get_distinct_columns(tmp_path):
    a = write_run(tmp_path / "a", "run")
    b = write_run(tmp_path / "b", "run", learning_rate=3e-5)
    markdown = compare_runs([a, b], tmp_path / "cmp").read_text(encoding="utf-8")
    assert "| setting | a/run | b/run |" in markdown


def test_md_cell_escapes_pipes_newlines_and_tags():
    assert md_cell("a | b\nc\r\nd") == "a \\| b<br>c<br>d"
    assert md_cell("요약</s>") == "요약&lt;/s>"


def test_pick_examples_best_and_worst_never_overlap():
    examples = [{"id": str(i), "rouge_sum": i / 10} for i in range(7)]
    best, worst = pick_examples(examples, "rouge_sum", k=5)
    assert [e["id"] for e in best] == ["6", "5", "4", "3", "2"]
    assert [e["id"] for e in worst] == ["0", "1"]


def test_run_report_has_examples_scores_spikes_and_plots(tmp_path):
    run_dir = write_run(tmp_path / "runs", "r1", spikes=((3, 4.5), (7, 2.2)))
    dev_scores = json.loads((run_dir / "dev_scores.json").read_text())
    examples = [
        {
            "id": f"dev_{i:03d}",
            "prediction": f"예측 {i} | 파이프\n둘째 줄",
            "reference": f"정답 {i}",
            "rouge1": 5.0 * i,
            "final_score": 2.5 * i,
        }
        for i in range(20)
    ]
    plots = run_plots(run_dir)
    assert [p.name for p in plots] == ["loss.png", "grad_norm.png", "eval.png"]
    for plot in plots:
        assert plot.parent == run_dir / "plots"
        assert_png(plot)

    report = write_run_report(run_dir, dev_scores, examples)
    assert report == run_dir / "report.md"
    text = report.read_text(encoding="utf-8")
    assert table_row(text, "model") == ["tiny/llama"]
    assert table_row(text, "LoRA") == ["off (full fine-tuning)"]
    assert table_row(text, "packing") == ["true"]
    assert table_row(text, "effective batch")[0].startswith("64 examples (")
    assert table_row(text, "examples / optimizer step (mean)") == ["66.5"]
    assert table_row(text, "optimizer steps / epoch") == ["20"]
    assert table_row(text, "length of training") == ["max_steps 20"]
    assert table_row(text, "ROUGE-1 F1") == ["56.12"]  # metrics as a person names them, not key names
    assert table_row(text, "**final score (mean of ROUGE-1/2/L F1)**") == ["**45.38**"]  # the headline, in bold
    assert "rouge_sum" not in section(text, "Dev scores")
    assert table_row(text, "real-token fraction") == ["1.000"]
    assert "2 optimizer step(s) above it" in text and table_row(text, "3") == ["4.500"]
    assert "![loss](plots/loss.png)" in text and "![grad_norm](plots/grad_norm.png)" in text

    best, worst = section(text, "Dev examples").split("### Worst")
    for i in (19, 18, 17, 16, 15):
        assert f"| dev_{i:03d} | {2.5 * i:.2f} | 예측 {i} \\| 파이프<br>둘째 줄 | 정답 {i} |" in best
    for i in (0, 1, 2, 3, 4):
        assert f"| dev_{i:03d} |" in worst and f"| dev_{i:03d} |" not in best
    assert "dev_010" not in text


def test_run_report_rebuilds_from_the_directory(tmp_path):
    """No arguments: dev_scores.json and dev_per_sample.csv of the run are used; no dev set is fine."""
    run_dir = write_run(tmp_path / "runs", "r1")
    (run_dir / "dev_per_sample.csv").write_text(
        "id,prediction,reference,final_score,foreign\na,좋은 요약,정답,90.5,False\nb,,정답,0.0,False\n",
        encoding="utf-8",
    )
    text = write_run_report(run_dir).read_text(encoding="utf-8")
    assert "| a | 90.50 | 좋은 요약 | 정답 |" in text and "| b | 0.00 | (empty) | 정답 |" in text
    assert table_row(text, "ROUGE sum (R1+R2+RL)") == ["136.15"]

    bare = write_run(tmp_path / "runs", "r2", dev_scores=False)
    (bare / "summary.json").unlink()
    text = write_run_report(bare, None, None).read_text(encoding="utf-8")
    assert "No dev scores" in text and "No dev examples." in text
    assert f"{bare}: no summary.json (incomplete run?)" in text


@pytest.mark.slow
def test_compare_real_tiny_runs(tmp_path):
    """Two real 3-step trainings of a tiny llama differing in learning rate and packing."""
    tiny = pytest.importorskip("dialsum.tiny")
    from dialsum.data import SAMPLE_DIR
    from dialsum.train import train

    train_csv = SAMPLE_DIR / "train.csv"
    if not train_csv.is_file():
        pytest.skip("no bundled sample data")
    model = tiny.tiny_model_cached("llama")
    run_dirs = []
    for name, lr, packing in (("lr1e-3-packed", 1e-3, True), ("lr1e-4-padded", 1e-4, False)):
        config = config_from_dict(
            {
                "model": {"name_or_path": str(model)},
                "data": {"train": str(train_csv)},
                "training": {
                    "max_steps": 3,
                    "per_device_train_batch_size": 2,
                    "gradient_accumulation_steps": 1,
                    "learning_rate": lr,
                    "packing": packing,
                    "gradient_checkpointing": False,
                    "max_length": 512,
                    "save_steps": 100,
                },
                "logging": {"steps": 1, "output_root": str(tmp_path / "runs")},
            }
        )
        run_dirs.append(train(config, output_dir=tmp_path / "runs" / name))

    markdown = compare_runs(run_dirs, tmp_path / "cmp").read_text(encoding="utf-8")
    settings = section(markdown, "Settings that differ")
    assert table_row(settings, "training.learning_rate") == ["0.001", "0.0001"]
    assert table_row(settings, "training.packing") == ["true", "false"]
    assert len([line for line in settings.splitlines() if line.startswith("| ")]) == 1 + 2  # header + exactly 2 rows
    results = section(markdown, "Results")
    assert table_row(results, "steps") == ["3", "3"]
    fraction = table_row(results, "real-token fraction")
    packed, padded = (float(cell.strip("*")) for cell in fraction)  # packed rows pad only a row's tail
    assert 0.95 < packed <= 1.0 and padded < packed
    for name in ("loss", "grad_norm", "learning_rate"):
        assert_png(tmp_path / "cmp" / f"{name}.png")
    notes = section(markdown, "Notes")
    assert "no dev_scores.json (data.dev not set)" in notes

    text = write_run_report(run_dirs[0], None, None).read_text(encoding="utf-8")
    assert "![loss](plots/loss.png)" in text and (run_dirs[0] / "plots" / "loss.png").is_file()
