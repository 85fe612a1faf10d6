"""Competition submissions: DialogSum-Korean's CSV (the organizers' sample_submission.csv format) and Korean_DCS's
JSON/JSONL (the input written back with `output` filled in, nothing else changed).

The NIKL competition takes its test file back with each record's `output` set to the summary. Records keep
their order, their keys and their ids byte for byte (ids hold spaces and Hangul:
`nikluge-2024-일상 대화 요약-train-000001`); the file is UTF-8 without ASCII escapes, indented like the source.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from dialsum.data import data_format, load_dialogues
from dialsum.errors import DataError
from dialsum.writer import write_csv, write_text

__all__ = [
    "check_output_path",
    "read_dcs_outputs",
    "read_dcs_records",
    "write_dcs_submission",
]


def check_output_path(data_path: str | Path, output_path: str | Path) -> None:
    """Fail before any model loads when `output_path` cannot be written from `data_path`: a DCS submission
    needs a DCS input of the same extension; a CSV output is always possible."""
    data_path, output_path = Path(data_path), Path(output_path)
    out = data_format(output_path, "output")
    if out == "csv":
        return
    if data_format(data_path) != out:
        raise DataError(
            f"{output_path}: a .{out} submission is the DCS input written back with 'output' filled in, so the input "
            f"must be .{out} too, but {data_path} is .{data_format(data_path)}; use a .csv output or a .{out} input"
        )


def read_dcs_records(path: str | Path) -> tuple[list[dict[str, Any]], list[str]]:
    """The raw records of a DCS `.json` list or `.jsonl` file and where each is ('record 3', 'line 7').

    The file is validated by `load_dialogues` first, so every problem is a one-line DataError."""
    path = Path(path)
    load_dialogues(path)
    text = path.read_bytes().decode("utf-8-sig")
    if data_format(path) == "json":
        records = json.loads(text)
        return records, [f"record {i}" for i in range(1, len(records) + 1)]
    located = [(f"line {n}", json.loads(line)) for n, line in enumerate(text.split("\n"), start=1) if line.strip()]
    return [r for _, r in located], [where for where, _ in located]


def read_dcs_outputs(path: str | Path) -> dict[str, str]:
    """id → `output` of a DCS file used for scoring (a submission or a labelled file). A record without
    `output`, or with a non-string one, is a DataError naming file, record and field."""
    path = Path(path)
    records, where = read_dcs_records(path)
    outputs: dict[str, str] = {}
    for record, location in zip(records, where, strict=True):
        id_ = record["id"].strip()
        if "output" not in record:
            raise DataError(f"{path} {location} (id={id_}): field 'output' is missing (scoring needs it)")
        if not isinstance(record["output"], str):  # load_dialogues allows null for test files; scoring does not
            raise DataError(f"{path} {location} (id={id_}): field 'output' must be a string, got null")
        outputs[id_] = record["output"].strip()
    return outputs


def _layout(text: str) -> tuple[int | str | None, bool]:
    """(indent, ends with a newline) of a JSON source, so the submission looks like it."""
    lines = text.split("\n")
    indent: int | str | None = None
    for line in lines[1:]:
        stripped = line.lstrip(" \t")
        if stripped and stripped != line:
            whitespace = line[: len(line) - len(stripped)]
            indent = whitespace if "\t" in whitespace else len(whitespace)
            break
    return indent, text.endswith("\n")


def write_dcs_submission(source: str | Path, output: str | Path, summaries: list[str]) -> Path:
    """Write `source`'s records to `output` with `output` set to the summaries, in input order."""
    source, output = Path(source), Path(output)
    records, _ = read_dcs_records(source)
    if len(records) != len(summaries):
        raise ValueError(f"write_dcs_submission: {len(records)} records but {len(summaries)} summaries")
    for record, summary in zip(records, summaries):
        record["output"] = summary  # replaces in place (key order kept) or appends when a test record lacks it
    text = source.read_bytes().decode("utf-8-sig")
    if data_format(source) == "json":
        indent, newline = _layout(text)
        body = json.dumps(records, indent=indent, ensure_ascii=False) + ("\n" if newline else "")
    else:
        body = "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records)
    write_text(output, body)
    return output


def write_submission(path: Path, ids: list[str], summaries: list[str]) -> None:
    """The organizers' format (sample_submission.csv): an unnamed index column, then fname,summary, in test order."""
    rows = [[index, fname, summary] for index, (fname, summary) in enumerate(zip(ids, summaries, strict=True))]
    write_csv(path, ["", "fname", "summary"], rows)
