"""`dialsum kfold`: a 2-fold tiny-model run on the bundled sample, its files, resume of a killed fold, the split."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, SAMPLE
from dialsum.kfold import assign_folds

FEW_STEPS = [
    "--set",
    "training.max_steps=4",
    "--set",
    "training.eval_steps=2",
    "--set",
    "training.save_steps=2",
    "--set",
    "generation.max_new_tokens=auto",
    "--set",
    "generation.max_new_tokens_cap=8",
]


def dialsum(*args) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "dialsum.cli", *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, cwd=ROOT)


def _ids(path: Path) -> list[str]:
    with path.open(encoding="utf-8", newline="") as handle:
        return [row["fname"] for row in csv.DictReader(handle)]


def test_assign_folds_is_balanced_seeded_and_covers_every_id():
    ids = [f"t{i}" for i in range(103)]
    folds = assign_folds(ids, 5, seed=42)
    assert sorted({f: folds.count(f) for f in set(folds)}.values()) == [20, 20, 21, 21, 21]
    assert folds == assign_folds(ids, 5, seed=42)
    assert folds != assign_folds(ids, 5, seed=7)
    assert folds != [i % 5 for i in range(103)]  # shuffled, not dealt in file order


@pytest.mark.slow
def test_two_fold_run_then_killed_fold_resumes_then_ensemble(tmp_path):
    parent = tmp_path / "kf"
    result = dialsum("kfold", "configs/demo.yaml", "--folds", 2, "--output-dir", parent, *FEW_STEPS)
    assert result.returncode == 0, result.stderr[-3000:]

    spec = json.loads((parent / "kfold.json").read_text(encoding="utf-8"))
    train_ids = _ids(SAMPLE / "train.csv")
    held = [_ids(parent / "data" / f"fold-{i}-heldout.csv") for i in range(2)]
    trained = [_ids(parent / "data" / f"fold-{i}-train.csv") for i in range(2)]
    # the held-out parts partition the training rows; each fold trains on exactly the others
    assert sorted(held[0] + held[1]) == sorted(train_ids) and not set(held[0]) & set(held[1])
    assert set(trained[0]) == set(held[1]) and set(trained[1]) == set(held[0])
    for i in range(2):
        run_dir = parent / f"fold-{i}"
        config = (run_dir / "config.yaml").read_text(encoding="utf-8")
        assert f"fold-{i}-train.csv" in config  # a normal run directory, trained on its fold
        assert f"fitted_on: {parent}/data/fold-{i}-train.csv" in config  # the length rule, from the fold's data
        assert _ids(run_dir / "oof_predictions.csv") == held[i]  # out-of-fold: the rows it never saw
        assert _ids(run_dir / "submission.csv") == _ids(SAMPLE / "test.csv")  # test predictions from every fold
        assert json.loads((run_dir / "dev_scores.json").read_text())["n"] == 10
        report = (run_dir / "report.md").read_text(encoding="utf-8")
        assert "## Clean-up" in report and "## Length control" in report and "fixed, one limit" in report
        assert set(json.loads((run_dir / "cleanup.json").read_text())["dev"]) == {
            "normalize_tags",
            "remove_think",
            "remove_artifacts",
        }
    # every training row predicted once, in training-file order; the summary table has per-fold and mean rows
    assert _ids(parent / "oof_predictions.csv") == [i for i in spec["assignment"]]
    scores = json.loads((parent / "kfold_scores.json").read_text(encoding="utf-8"))
    oof = [json.loads((parent / f"fold-{i}" / "oof_scores.json").read_text())["rouge_sum"] for i in range(2)]
    assert scores["folds_done"] == 2 and scores["mean_oof"]["rouge_sum"] == pytest.approx(sum(oof) / 2)
    assert "| mean |" in (parent / "kfold.md").read_text(encoding="utf-8")

    # Kill fold 1 after its first checkpoint: what a crash at step 3 leaves behind.
    fold1 = parent / "fold-1"
    for name in ("report.md", "oof_predictions.csv", "oof_scores.json", "summary.json", "submission.csv"):
        (fold1 / name).unlink()
    shutil.rmtree(fold1 / "model")
    shutil.rmtree(fold1 / "checkpoints" / "checkpoint-4")
    fold0_model = (parent / "fold-0" / "model" / "model.safetensors").stat().st_mtime_ns

    refused = dialsum("kfold", "configs/demo.yaml", "--folds", 2, "--output-dir", parent, "--fold", 1, *FEW_STEPS)
    assert refused.returncode == 2 and "--resume" in refused.stderr and refused.stderr.strip().count("\n") == 0

    resumed = dialsum("kfold", "configs/demo.yaml", "--folds", 2, "--output-dir", parent, "--resume", *FEW_STEPS)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "fold 0: done already" in resumed.stderr
    assert (parent / "fold-0" / "model" / "model.safetensors").stat().st_mtime_ns == fold0_model
    steps = [json.loads(line)["step"] for line in (fold1 / "metrics.jsonl").read_text().splitlines()]
    assert max(steps) == 4 and (fold1 / "oof_scores.json").is_file() and (fold1 / "submission.csv").is_file()

    # A different split into the same parent is refused.
    other = dialsum("kfold", "configs/demo.yaml", "--folds", 3, "--output-dir", parent, *FEW_STEPS)
    assert other.returncode == 2 and "different k-fold split" in other.stderr

    # The folds' test predictions go straight into the ensemble and out as a submission.
    ensemble = dialsum(
        "ensemble",
        parent,
        "--split",
        "test",
        "--output",
        tmp_path / "ens.csv",
        "--submission",
        tmp_path / "submission.csv",
    )
    assert ensemble.returncode == 0, ensemble.stderr
    assert "fold-0/submission.csv" in ensemble.stdout and "fold-1/submission.csv" in ensemble.stdout
    with (tmp_path / "submission.csv").open(encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["", "fname", "summary"] and [r[1] for r in rows[1:]] == _ids(SAMPLE / "test.csv")


@pytest.mark.parametrize(
    "args,message",
    [
        (["--folds", "1"], "--folds 1: need at least 2 folds"),
        (["--folds", "2", "--fold", "2", "--output-dir", "x"], "--fold 2: expected 0..1"),
        (["--folds", "2", "--fold", "0"], "--fold needs --output-dir"),
        (["--folds", "2", "--resume"], "--resume needs --output-dir"),
        (["--folds", "2", "--output-dir", "kf", "--set", "data.train=missing.csv"], "missing.csv: file not found"),
        (["--folds", "41", "--output-dir", "kf", "--set", f"data.train={SAMPLE / 'train.csv'}"], "only 40 training"),
    ],
)
def test_bad_kfold_flags_are_one_line_before_anything_is_written(args, message, tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "dialsum.cli", "kfold", str(ROOT / "configs" / "demo.yaml"), *args],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert result.returncode == 2 and message in result.stderr and result.stderr.strip().count("\n") == 0
    assert list(tmp_path.iterdir()) == []


def test_summary_table_and_fold_ensemble_from_fold_directories(tmp_path):
    """summarise_kfold reads only the fold directories: per-fold and mean scores, the joined OOF file, and with
    K >= 3 the folds' MBR consensus on dev (scored) and test (a submission). No training needed."""
    from dialsum.data import load_dialogues, write_predictions
    from dialsum.kfold import summarise_kfold
    from dialsum.metrics import score

    parent = tmp_path / "kf"
    dev = load_dialogues(SAMPLE / "dev.csv")
    test_ids = _ids(SAMPLE / "test.csv")
    train_ids = ["t0", "t1", "t2"]
    makers = [
        lambda d: d.turns[0].utterance,
        lambda d: d.turns[1].utterance,
        lambda d: d.turns[0].utterance + " " + d.turns[1].utterance,
    ]
    folds = []
    for i, make in enumerate(makers):
        run = parent / f"fold-{i}"
        run.mkdir(parents=True)
        predictions = [make(d) for d in dev]
        write_predictions(run / "dev_predictions.csv", [d.id for d in dev], predictions)
        scores = score(predictions, [d.references for d in dev])
        (run / "dev_scores.json").write_text(json.dumps(scores))
        (run / "oof_scores.json").write_text(json.dumps({**scores, "rouge_sum": 10.0 * (i + 1)}))
        write_predictions(run / "oof_predictions.csv", [train_ids[i]], [f"oof {i}"])
        with (run / "submission.csv").open("w", encoding="utf-8") as handle:
            handle.write(",fname,summary\n" + "".join(f"{n},{t},fold {i} says {t}\n" for n, t in enumerate(test_ids)))
        folds.append({"fold": i, "dir": f"fold-{i}", "train": 2, "heldout": 1})
    spec = {
        "k": 3,
        "seed": 1,
        "include_dev": False,
        "dev": str(SAMPLE / "dev.csv"),
        "folds": folds,
        "assignment": {"t2": 2, "t0": 0, "t1": 1},
    }
    (parent / "kfold.json").write_text(json.dumps(spec))

    summary = summarise_kfold(parent)
    assert [r["oof_rouge_sum"] for r in summary["folds"]] == [10.0, 20.0, 30.0]
    assert summary["mean_oof"]["rouge_sum"] == pytest.approx(20.0)
    dev_sums = [json.loads((parent / f"fold-{i}" / "dev_scores.json").read_text())["rouge_sum"] for i in range(3)]
    assert summary["mean_dev"]["rouge_sum"] == pytest.approx(sum(dev_sums) / 3)
    assert summary["ensemble_dev"]["rouge_sum"] >= summary["mean_dev"]["rouge_sum"]
    assert _ids(parent / "oof_predictions.csv") == ["t2", "t0", "t1"]  # the split's order
    with (parent / "submission.csv").open(encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["", "fname", "summary"] and [r[1] for r in rows[1:]] == test_ids
    report = (parent / "kfold.md").read_text(encoding="utf-8")
    assert "| mean |" in report and "MBR ensemble of the 3 folds on dev" in report


def _fake_folds(parent: Path, scheme: str) -> None:
    """Three fold directories with dev and OOF scores under `scheme`, and the kfold.json that names them."""
    from dialsum.data import load_dialogues, write_predictions
    from dialsum.schemes import score_scheme

    dev = load_dialogues(SAMPLE / "dev.csv")
    test_ids = _ids(SAMPLE / "test.csv")
    makers = [
        lambda d: d.turns[0].utterance,
        lambda d: d.turns[1].utterance,
        lambda d: d.turns[0].utterance + " " + d.turns[1].utterance,
    ]
    folds = []
    for i, make in enumerate(makers):
        run = parent / f"fold-{i}"
        run.mkdir(parents=True)
        predictions = [make(d) for d in dev]
        write_predictions(run / "dev_predictions.csv", [d.id for d in dev], predictions)
        scores, _ = score_scheme(predictions, [d.references for d in dev], scheme)
        (run / "dev_scores.json").write_text(json.dumps(scores, ensure_ascii=False))
        (run / "oof_scores.json").write_text(json.dumps(scores, ensure_ascii=False))
        write_predictions(run / "oof_predictions.csv", [f"t{i}"], [f"oof {i}"])
        with (run / "submission.csv").open("w", encoding="utf-8") as handle:
            handle.write(",fname,summary\n" + "".join(f"{n},{t},fold {i} says {t}\n" for n, t in enumerate(test_ids)))
        folds.append({"fold": i, "dir": f"fold-{i}", "train": 2, "heldout": 1})
    spec = {"k": 3, "seed": 1, "include_dev": False, "dev": str(SAMPLE / "dev.csv"), "folds": folds}
    spec["assignment"] = {"t0": 0, "t1": 1, "t2": 2}
    (parent / "kfold.json").write_text(json.dumps(spec))


@pytest.mark.parametrize("scheme", ["kiwi", "dialogsum", "dcs"])
def test_kfold_summary_and_fold_consensus_on_the_folds_own_scheme(scheme, tmp_path):
    """Every number of kfold.md is on the folds' scheme: the per-fold and mean columns are the scheme's keys, and the
    fold consensus is scored under the same scheme (before: always Kiwi, beside folds scored under dialogsum, and
    dcs died on the missing 'rouge_sum'). kfold.md names the scheme and the analyzer."""
    from dialsum.kfold import summarise_kfold
    from dialsum.schemes import get_scheme

    if scheme != "kiwi":
        pytest.importorskip("mecab")
    parent = tmp_path / "kf"
    _fake_folds(parent, scheme)
    summary = summarise_kfold(parent)
    definition = get_scheme(scheme)
    fold_scores = [json.loads((parent / f"fold-{i}" / "dev_scores.json").read_text()) for i in range(3)]
    key = definition.rank_key(fold_scores[0])
    assert summary["scheme"] == scheme and summary["ensemble_dev"]["scheme"] == scheme
    assert set(summary["mean_dev"]) == set(definition.keys)
    assert summary["mean_dev"][key] == pytest.approx(sum(s[key] for s in fold_scores) / 3)
    # the consensus is one of the candidates per row: under the same scheme it lands within the folds' range
    assert min(s[key] for s in fold_scores) - 1e-9 <= summary["ensemble_dev"][key]
    report = (parent / "kfold.md").read_text(encoding="utf-8")
    assert f"scheme `{scheme}`" in report and fold_scores[0]["analyzer"] in report
    assert f"(scheme `{scheme}`, as the folds)" in report
    if scheme == "dcs":
        assert "OOF BERTScore" in report and "OOF sum" not in report


@pytest.mark.slow
def test_kfold_run_under_dcs(tmp_path):
    """A real 2-fold run under evaluation.scheme=dcs (with max_new_tokens=auto): every fold trains, predicts and
    scores, and the summary reads dcs's keys (before: KeyError 'rouge2' after the first fold trained)."""
    pytest.importorskip("mecab")
    parent = tmp_path / "kf"
    result = dialsum(
        "kfold", "configs/demo.yaml", "--folds", 2, "--output-dir", parent, *FEW_STEPS,
        "--set", "evaluation.scheme=dcs", "--set", "data.test=null",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    scores = json.loads((parent / "kfold_scores.json").read_text(encoding="utf-8"))
    assert scores["scheme"] == "dcs" and scores["folds_done"] == 2
    assert scores["mean_oof"]["rouge1"] is not None and scores["mean_oof"]["final_score"] is None  # BLEURT absent
    assert "OOF R1" in (parent / "kfold.md").read_text(encoding="utf-8")
