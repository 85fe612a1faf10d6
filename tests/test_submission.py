"""Korean_DCS submissions: the input written back with `output` filled in; scoring files checked field by field."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, SAMPLE, shared_file
from dialsum.errors import DataError, DialsumError
from dialsum.evaluate import evaluate_scheme_files
from dialsum.submission import check_output_path, read_dcs_outputs, write_dcs_submission

DCS_JSONL = SAMPLE / "dcs_sample.jsonl"


def dialsum(*args, cwd=ROOT):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "240"}
    return subprocess.run(
        [sys.executable, "-m", "dialsum.cli", *map(str, args)], capture_output=True, text=True, cwd=cwd, env=env
    )


def one_line_error(result) -> str:
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    return lines[0]


def dcs_json(tmp_path: Path, name: str = "dev.json", drop_output: bool = False) -> Path:
    """The bundled DCS sample as a JSON list (4-space indent, like NIKL's files), with NIKL-style ids that hold
    spaces and Hangul."""
    records = [json.loads(line) for line in DCS_JSONL.read_text(encoding="utf-8").splitlines() if line.strip()]
    for number, record in enumerate(records, start=1):
        record["id"] = f"nikluge-2024-일상 대화 요약-dev-{number:06d}"
        if drop_output:
            del record["output"]
    path = tmp_path / name
    path.write_text(json.dumps(records, indent=4, ensure_ascii=False), encoding="utf-8")
    return path


def test_writing_back_the_outputs_reproduces_the_real_file_byte_for_byte(tmp_path):
    source = shared_file("data/korean-dcs/sample.json")
    records = json.loads(source.read_text(encoding="utf-8"))
    out = write_dcs_submission(source, tmp_path / "submission.json", [r["output"] for r in records])
    assert out.read_bytes() == source.read_bytes()  # UTF-8, no ASCII escapes, 4-space indent, no final newline


def test_submission_changes_only_output_and_keeps_ids_exactly(tmp_path):
    source = dcs_json(tmp_path, drop_output=True)  # a test file: no `output` at all
    summaries = [f'요약 {i}: 화자들이 "취미"를 이야기했다.' for i in range(5)]
    out = write_dcs_submission(source, tmp_path / "submission.json", summaries)
    before = json.loads(source.read_text(encoding="utf-8"))
    after = json.loads(out.read_text(encoding="utf-8"))
    expected_ids = [f"nikluge-2024-일상 대화 요약-dev-{n:06d}" for n in range(1, 6)]
    assert [r["id"] for r in after] == [r["id"] for r in before] == expected_ids
    assert [r["output"] for r in after] == summaries
    assert [{k: v for k, v in r.items() if k != "output"} for r in after] == before
    text = out.read_text(encoding="utf-8")
    assert "일상 대화 요약" in text and "\\u" not in text and text.startswith('[\n    {\n        "id": ')


def test_jsonl_round_trip_is_byte_exact(tmp_path):
    records = [json.loads(line) for line in DCS_JSONL.read_text(encoding="utf-8").splitlines() if line.strip()]
    out = write_dcs_submission(DCS_JSONL, tmp_path / "submission.jsonl", [r["output"] for r in records])
    assert out.read_bytes() == DCS_JSONL.read_bytes()


def test_output_path_must_fit_the_input(tmp_path):
    check_output_path(DCS_JSONL, tmp_path / "p.csv")  # a CSV is always possible
    check_output_path(DCS_JSONL, tmp_path / "p.jsonl")
    with pytest.raises(DataError, match=r"p\.json: a \.json submission .* but .*test\.csv is \.csv"):
        check_output_path(SAMPLE / "test.csv", tmp_path / "p.json")
    with pytest.raises(DataError, match=r"must be \.json too, but .*dcs_sample\.jsonl is \.jsonl"):
        check_output_path(DCS_JSONL, tmp_path / "p.json")
    with pytest.raises(DataError, match="unsupported output type '.txt'"):
        check_output_path(DCS_JSONL, tmp_path / "p.txt")


def test_scoring_file_needs_a_string_output(tmp_path):
    records = json.loads(dcs_json(tmp_path).read_text(encoding="utf-8"))
    del records[2]["output"]
    (tmp_path / "missing.json").write_text(json.dumps(records, ensure_ascii=False), encoding="utf-8")
    with pytest.raises(
        DataError,
        match=r"missing\.json record 3 \(id=nikluge-2024-일상 대화 요약-dev-000003\): "
        r"field 'output' is missing",
    ):
        read_dcs_outputs(tmp_path / "missing.json")
    records[2]["output"] = None
    (tmp_path / "null.json").write_text(json.dumps(records, ensure_ascii=False), encoding="utf-8")
    with pytest.raises(DataError, match=r"null\.json record 3 .*field 'output' must be a string, got null"):
        read_dcs_outputs(tmp_path / "null.json")
    records[2]["output"] = ["a list"]
    (tmp_path / "list.json").write_text(json.dumps(records, ensure_ascii=False), encoding="utf-8")
    with pytest.raises(DataError, match=r"list\.json record 3 .*field 'output' must be a string, got list"):
        read_dcs_outputs(tmp_path / "list.json")


def test_evaluate_rejects_mixed_pairs_and_mismatched_ids(tmp_path):
    labelled = dcs_json(tmp_path)
    with pytest.raises(DialsumError, match=r"test\.csv is a CSV file but .*dev\.json is a DCS JSON/JSONL file"):
        evaluate_scheme_files(SAMPLE / "test.csv", labelled)
    records = json.loads(labelled.read_text(encoding="utf-8"))
    records[0]["id"] = "nikluge-2024-일상대화요약-dev-000001"  # the spaces matter
    (tmp_path / "sub.json").write_text(json.dumps(records, ensure_ascii=False), encoding="utf-8")
    with pytest.raises(
        DialsumError,
        match=r"missing predictions for nikluge-2024-일상 대화 요약-dev-000001 \(1\); "
        r"predictions for ids not in the references: nikluge-2024-일상대화요약",
    ):
        evaluate_scheme_files(tmp_path / "sub.json", labelled)


def test_evaluate_cli_bad_dcs_input_is_one_line(tmp_path):
    labelled = dcs_json(tmp_path)
    test_file = dcs_json(tmp_path, "test.json", drop_output=True)  # a test file is not a scoring file
    line = one_line_error(dialsum("evaluate", "--predictions", test_file, "--references", labelled, "--scheme", "dcs"))
    assert "test.json record 1 (id=nikluge-2024-일상 대화 요약-dev-000001): field 'output' is missing" in line
    line = one_line_error(dialsum("evaluate", "--predictions", SAMPLE / "dev.csv", "--references", labelled))
    assert "dev.csv is a CSV file but" in line


@pytest.mark.slow
def test_dcs_round_trip_predict_submission_evaluate(tiny_llama, tmp_path):
    """predict on a DCS JSON → submission.json → evaluate --scheme dcs against the labelled file, via the CLI."""
    from dialsum.config import config_from_dict, save_config

    labelled = dcs_json(tmp_path)
    test_file = dcs_json(tmp_path, "test.json", drop_output=True)
    config = config_from_dict(
        {"model": {"name_or_path": str(tiny_llama)}, "generation": {"max_new_tokens": 12, "no_repeat_ngram_size": 1}}
    )
    save_config(config, tmp_path / "config.yaml")
    result = dialsum(
        "predict",
        "--model",
        tiny_llama,
        "--data",
        test_file,
        "--output",
        tmp_path / "submission.json",
        "--config",
        tmp_path / "config.yaml",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    submitted = json.loads((tmp_path / "submission.json").read_text(encoding="utf-8"))
    assert [r["id"] for r in submitted] == [r["id"] for r in json.loads(test_file.read_text(encoding="utf-8"))]
    assert all(isinstance(r["output"], str) for r in submitted)
    result = dialsum(
        "evaluate",
        "--predictions",
        tmp_path / "submission.json",
        "--references",
        labelled,
        "--scheme",
        "dcs",
        "--json",
        tmp_path / "scores.json",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    scores = json.loads((tmp_path / "scores.json").read_text(encoding="utf-8"))
    assert scores["scheme"] == "dcs" and scores["n"] == 5 and scores["rouge1"] is not None
    assert "Mecab" in scores["analyzer"] and scores["final_score"] is None
    assert "note: BLEURT-20: not computed" in result.stdout
    line = one_line_error(
        dialsum(
            "predict",
            "--model",
            tiny_llama,
            "--data",
            SAMPLE / "test.csv",
            "--output",
            tmp_path / "x.json",
            "--config",
            tmp_path / "config.yaml",
        )
    )
    assert "x.json: a .json submission" in line and not (tmp_path / "x.json").exists()


@pytest.mark.slow
def test_run_on_dcs_files_writes_submission_json_and_names_the_scheme(tmp_path):
    """`dialsum run` with DCS dev/test files: submission.json is the test file written back; dev_scores.json,
    the console table and report.md name the scheme and the analyzer."""
    pytest.importorskip("mecab", reason="python-mecab-ko is not installed: scheme dialogsum needs Mecab")
    dev = dcs_json(tmp_path)
    test_file = dcs_json(tmp_path, "test.json", drop_output=True)
    run_dir = tmp_path / "run"
    overrides = [
        f"data.train={DCS_JSONL}",
        f"data.dev={dev}",
        f"data.test={test_file}",
        "evaluation.scheme=dialogsum",
        "training.max_steps=2",
        "training.eval_steps=2",
        "training.save_steps=2",
        "generation.max_new_tokens=8",
    ]
    result = dialsum("run", "configs/demo.yaml", "--output-dir", run_dir, *(a for o in overrides for a in ("--set", o)))
    assert result.returncode == 0, result.stderr[-3000:]
    assert not (run_dir / "submission.csv").exists()
    submitted = json.loads((run_dir / "submission.json").read_text(encoding="utf-8"))
    assert [r["id"] for r in submitted] == [f"nikluge-2024-일상 대화 요약-dev-{n:06d}" for n in range(1, 6)]
    assert all(isinstance(r["output"], str) for r in submitted)
    scores = json.loads((run_dir / "dev_scores.json").read_text(encoding="utf-8"))
    assert scores["scheme"] == "dialogsum" and scores["analyzer"].startswith("Mecab morphemes")
    assert scores["headline"] == "final_score" and scores["n"] == 5
    assert "dialogsum — DialogSum-Korean" in result.stdout + result.stderr
    report = (run_dir / "report.md").read_text(encoding="utf-8")
    assert "Scheme `dialogsum`: DialogSum-Korean" in report and "Analyzer: Mecab morphemes (python-mecab-ko" in report
    assert "leaderboard final score (mean of ROUGE-1/2/L F1)" in report


def test_dcs_preset_renders_the_baseline_prompt_in_inspect():
    """configs/korean-dcs-bllossom-8b.yaml: LoRA on the 2024 baseline's model, '화자SD2000001:' speakers,
    subject_keyword as the topic, DCS scoring; `dialsum inspect` shows the prompt (with the real Llama-3 tokenizer
    from ../shared, since the 8B model's own files need the hub)."""
    from dialsum.config import load_config

    preset = ROOT / "configs" / "korean-dcs-bllossom-8b.yaml"
    config = load_config(preset)
    assert config.model.name_or_path == "MLP-KTLim/llama-3-Korean-Bllossom-8B"
    assert config.lora.enabled and config.prompt.speaker_style == "prefixed" and config.evaluation.scheme == "dcs"
    tokenizer = shared_file("models/llama-3.2-korean-bllossom-3b/tokenizer.json").parent
    sample = shared_file("data/korean-dcs/sample.json")
    result = dialsum("inspect", preset, "--data", sample, "--n", "1", "--set", f"model.name_or_path={tokenizer}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "example 0 — nikluge-2024-일상 대화 요약-train-000001" in result.stdout
    assert "[Conversation]\n화자SD2000001: 저는 여행 다니는 것을 굉장히 좋아하는데요." in result.stdout
    assert "[Question]\n위 해외여행 주제에 대한 대화를 요약해주세요." in result.stdout
