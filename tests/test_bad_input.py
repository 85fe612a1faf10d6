"""Bad input, table-driven, through the real CLI entry point: each case is one line naming the file, row, field, key
or flag, exit code 2, no traceback, and nothing written: every input and every file that existed keeps its bytes,
and no new file appears."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

from conftest import ROOT, SAMPLE
from dialsum.cli import main

DEMO = ROOT / "configs" / "demo.yaml"
CONFIG = """model:
  name_or_path: {model}
data:
  train: {train}
training:
  max_steps: 2
  save_steps: 100
"""


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def config_file(d: Path, model: str, extra: str = "", train: Path | None = None) -> Path:
    return write(d / "c.yaml", CONFIG.format(model=model, train=train or d / "train.csv") + extra)


def snapshot(d: Path) -> dict[str, bytes]:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


# Each case: (id, build(d, model) -> argv, expected fragment of the one error line).
def _predict_into_its_input(d, m):
    return ["predict", "--model", m, "--data", d / "train.csv", "--output", d / "train.csv"]


def _dcs_into_its_input(d, m):
    shutil.copy(SAMPLE / "dcs_sample.jsonl", d / "dcs.jsonl")
    return ["predict", "--model", m, "--data", d / "dcs.jsonl", "--output", d / "dcs.jsonl"]


def _per_sample_over_references(d, m):
    return ["evaluate", "--predictions", d / "p.csv", "--references", d / "dev.csv", "--per-sample", d / "dev.csv"]


def _json_over_predictions(d, m):
    return ["evaluate", "--predictions", d / "p.csv", "--references", d / "dev.csv", "--json", d / "p.csv"]


def _ensemble_over_a_source(d, m):
    return ["ensemble", d / "p.csv", d / "q.csv", d / "r.csv", "--output", d / "p.csv"]


def _existing_output(d, m):
    write(d / "out.csv", "old\n")
    return ["predict", "--model", m, "--data", d / "train.csv", "--output", d / "out.csv"]


def _output_is_a_directory(d, m):
    (d / "outdir").mkdir()
    return ["predict", "--model", m, "--data", d / "train.csv", "--output", d / "outdir"]


def _output_under_a_file(d, m):
    return ["evaluate", "--predictions", d / "p.csv", "--references", d / "dev.csv", "--json", d / "p.csv" / "x.json"]


def _model_without_tokenizer(d, m):
    shutil.copy(Path(m) / "config.json", write(d / "bare" / "x", "").parent / "config.json")
    (d / "bare" / "x").unlink()
    return ["predict", "--model", d / "bare", "--data", d / "train.csv", "--output", d / "o.csv"]


def _unreadable_model_config(d, m):
    shutil.copytree(m, d / "broken")
    (d / "broken" / "config.json").write_text("{not json", encoding="utf-8")
    return ["predict", "--model", d / "broken", "--data", d / "train.csv", "--output", d / "o.csv"]


def _plan(flag, value):
    def build(d, m):
        return ["plan", config_file(d, m), flag, value]

    return build


def _utility(value):
    def build(d, m):
        return ["ensemble", d / "p.csv", d / "q.csv", d / "r.csv", "--output", d / "e.csv", "--utility", value]

    return build


def _yaml(extra, *set_):
    def build(d, m):
        path = config_file(d, m, extra)
        return ["train", path, "--output-dir", d / "run", *[a for s in set_ for a in ("--set", s)]]

    return build


def _replace_yaml(old, new, *set_):
    def build(d, m):
        path = config_file(d, m)
        path.write_text(path.read_text(encoding="utf-8").replace(old, new), encoding="utf-8")
        return ["train", path, "--output-dir", d / "run", *[a for s in set_ for a in ("--set", s)]]

    return build


def _train_data(transform):
    def build(d, m):
        text = transform((SAMPLE / "train.csv").read_text(encoding="utf-8"))
        bad = write(d / "bad.csv", text)
        return ["train", config_file(d, m, train=bad), "--output-dir", d / "run"]

    return build


def _first_summary_empty(text: str) -> str:
    import csv
    import io

    rows = list(csv.reader(io.StringIO(text)))
    rows[2][2] = ""
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows(rows)
    return out.getvalue()


def _train_flag(*extra):
    def build(d, m):
        return ["train", config_file(d, m), "--output-dir", d / "run", *extra]

    return build


CASES = [
    ("predict-output-is-its-input", _predict_into_its_input, "is an input of this command"),
    ("predict-dcs-output-is-its-input", _dcs_into_its_input, "is an input of this command"),
    ("evaluate-per-sample-over-references", _per_sample_over_references, "--per-sample"),
    ("evaluate-json-over-predictions", _json_over_predictions, "--json"),
    ("ensemble-output-is-a-source", _ensemble_over_a_source, "is an input of this command"),
    ("existing-output-without-overwrite", _existing_output, "already exists; pass --overwrite"),
    ("output-is-a-directory", _output_is_a_directory, "is a directory"),
    ("output-under-a-regular-file", _output_under_a_file, "is a file, so no folder can be made"),
    ("model-folder-without-tokenizer", _model_without_tokenizer, "bare"),
    ("unreadable-model-config", _unreadable_model_config, "config.json"),
    ("plan-world-size-0", _plan("--world-size", "0"), "--world-size must be at least 1 (got 0)"),
    ("plan-world-size-negative", _plan("--world-size", "-2"), "--world-size must be at least 1 (got -2)"),
    ("plan-train-examples-negative", _plan("--train-examples", "-5"), "--train-examples must be at least 1"),
    ("plan-train-examples-0", _plan("--train-examples", "0"), "--train-examples must be at least 1"),
    ("utility-nan", _utility("nan,nan,nan"), "--utility 'nan,nan,nan'"),
    ("utility-inf", _utility("inf,1,1"), "--utility 'inf,1,1'"),
    ("yaml-duplicate-key", _yaml("  max_steps: 400\n"), "duplicate key 'max_steps' at line 8 (first given at line 6)"),
    ("yaml-second-section", _yaml("training:\n  packing: false\n"), "duplicate key 'training' at line 8"),
    ("yaml-bool-for-int", _yaml("  per_device_train_batch_size: true\n"), "expected an integer, not true/false"),
    ("yaml-tab", _replace_yaml("  max_steps", "\tmax_steps"), "line 6, column 1: a tab character"),
    (
        "yaml-section-not-a-mapping",
        _replace_yaml("training:\n  max_steps: 2\n  save_steps: 100\n", "training: 5\n", "training.max_steps=3"),
        "'training' is 5 in the config, not a section",
    ),
    ("unknown-script", _train_flag("--set", "generation.forbidden_scripts=[Klingon]"), "generation.forbidden_scripts"),
    ("nul-byte", _train_data(lambda t: t.replace("안녕하세요", "안녕\x00하세요", 1)), "holds a NUL byte"),
    ("empty-train-summary", _train_data(_first_summary_empty), "bad.csv: record train_1: field 'summary' is empty"),
    ("config-is-a-directory", lambda d, m: ["train", d], "is a directory, not a YAML config file"),
    ("inspect-negative-n", lambda d, m: ["inspect", config_file(d, m), "--n", "-3"], "--n must be at least 0"),
    (
        "screen-negative-limit",
        lambda d, m: ["screen", "--models", "lead", "--data", d / "dev.csv", "--limit", "-2"],
        "--limit",
    ),
    ("screen-no-model", lambda d, m: ["screen", "--models", ",", "--data", d / "dev.csv"], "--models ','"),
    ("compare-no-run", lambda d, m: ["compare", d / "train.csv", d / "nothing"], "is a run directory"),
    ("train-output-dir-is-a-file", lambda d, m: ["train", config_file(d, m), "--output-dir", d / "p.csv"], "is a file"),
    (
        "run-output-dir-under-a-file",
        lambda d, m: ["run", config_file(d, m), "--output-dir", d / "p.csv" / "run"],
        "p.csv is a file, so no folder can be made under it",
    ),
    (
        "kfold-output-dir-is-a-file",
        lambda d, m: ["kfold", config_file(d, m), "--folds", "3", "--output-dir", d / "p.csv"],
        "is a file",
    ),
    ("plan-json-is-a-directory", lambda d, m: ["plan", config_file(d, m), "--json", d], "is a directory"),
    (
        "lora-target-typo",
        _train_flag("--set", "lora.enabled=true", "--set", "lora.target_modules=[q_projj]"),
        "q_projj",
    ),
    ("kind-contradicts-checkpoint", _train_flag("--set", "model.kind=seq2seq"), "model.kind=seq2seq"),
]


@pytest.mark.parametrize("build, fragment", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2_and_nothing_written(build, fragment, tiny_llama, tmp_path, monkeypatch, capsys):
    d = tmp_path / "work"
    d.mkdir()
    shutil.copy(SAMPLE / "train.csv", d / "train.csv")
    shutil.copy(SAMPLE / "dev.csv", d / "dev.csv")
    for name in ("p.csv", "q.csv", "r.csv"):
        write(d / name, "fname,summary\n" + "".join(f"dev_{i},요약 {name} {i}\n" for i in range(3)))
    argv = [str(a) for a in build(d, str(tiny_llama))]
    before = snapshot(d)
    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(sys, "argv", ["dialsum", *argv])
    capsys.readouterr()
    with pytest.raises(SystemExit) as exited:
        main()
    err = capsys.readouterr().err
    assert exited.value.code == 2, err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and fragment in errors[0], err
    assert snapshot(d) == before  # every input and pre-existing output unchanged, nothing new
