"""Read dialogues: the DialogSum-Korean competition CSV and the Korean_DCS JSON/JSONL, into one record type.

Every problem in an input file raises `DataError` with a one-line message that names the file, the
row or record, and the field, so a user can open the file and fix it. Nothing is silently dropped.
Row numbers count data rows from 1 (the header is not a row); the physical line is given as well.
"""

from __future__ import annotations

import csv
import io
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Literal, Sequence

from dialsum.errors import DataError

__all__ = [
    "FORMATS",
    "SAMPLE_DIR",
    "DataError",
    "Dialogue",
    "Turn",
    "data_files",
    "source_counts",
    "data_format",
    "is_dcs",
    "load_dialogues",
    "load_topics",
    "parse_turns",
    "read_table",
    "write_predictions",
]

SAMPLE_DIR = Path(__file__).parent / "sample_data"


@dataclass(frozen=True)
class Turn:
    speaker: str  # as written in the source: "#Person1#" (CSV) or "SD2000001" (DCS)
    utterance: str


@dataclass
class Dialogue:
    id: str
    turns: list[Turn]
    topic: str | None = None  # CSV `topic`, or DCS `subject_keyword` joined by ", "
    references: list[str] = field(default_factory=list)  # gold summaries; empty for test files
    preamble: str = ""  # text before the first speaker tag, kept rather than dropped
    source: str | None = None  # CSV `source` column of an augmented file: "recipe:original id"


# The data formats dialsum reads and writes, by file extension: the one place that maps a path to its format.
FORMATS = {".csv": "csv", ".json": "json", ".jsonl": "jsonl"}
DataFormat = Literal["csv", "json", "jsonl"]


def data_format(path: str | Path, what: str = "file") -> DataFormat:
    """'csv' (the competition CSV), 'json' (a Korean_DCS list) or 'jsonl' (one DCS record per line), from the
    extension; anything else is a DataError naming the path (`what`: 'file', 'output', ...)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise DataError(
            f"{path}: unsupported {what} type {suffix or '(no extension)'!r}; expected {', '.join(FORMATS)}"
        )
    return FORMATS[suffix]  # type: ignore[return-value]


def is_dcs(path: str | Path) -> bool:
    """A Korean_DCS file (.json or .jsonl), as opposed to the competition CSV. Unknown extensions are not DCS."""
    return FORMATS.get(Path(path).suffix.lower()) in ("json", "jsonl")


def data_files(paths: str | Path | Sequence[str | Path] | None) -> list[Path]:
    """`data.train` as a list of paths: one file, or several (train.csv + aug.csv) read in order."""
    if paths is None:
        return []
    if isinstance(paths, (str, Path)):
        return [Path(paths)]
    return [Path(p) for p in paths]


def source_counts(paths: str | Path | Sequence[str | Path], skipped: Iterable[str] = ()) -> dict[str, int]:
    """Training examples per source: each file's plain rows under its path, an augmented file's rows (those with a
    `source` column, `dialsum augment`) under "path (recipe)"; `skipped` ids (not trained on) are left out."""
    skip = set(skipped)
    counts: dict[str, int] = {}
    for path in data_files(paths):
        for dialogue in load_dialogues(path):
            if dialogue.id in skip:
                continue
            label = f"{path} ({dialogue.source.split(':', 1)[0]})" if dialogue.source else str(path)
            counts[label] = counts.get(label, 0) + 1
    return counts


def load_dialogues(path: str | Path | Sequence[str | Path], strip_whitespace: bool = True) -> list[Dialogue]:
    """Read a competition `.csv`, a Korean_DCS `.json` list, or a `.jsonl` of DCS records, in file order.

    A list of files is read in order into one list; an id that two files share is a DataError naming both.
    `strip_whitespace` (config `data.strip_whitespace`) strips speakers, utterances, keywords and summaries; off,
    they are kept as the source has them (a DCS utterance's leading or trailing space, a summary's trailing space), so
    prompts and targets match a recipe that reads the raw text (the Korean_DCS 2024 baseline). Ids are always
    stripped, and emptiness is always judged on the stripped text."""
    if not isinstance(path, (str, Path)):
        files = data_files(path)
        if not files:
            raise DataError("no data file given (an empty list)")
        dialogues: list[Dialogue] = []
        first_file: dict[str, Path] = {}
        for file in files:
            for dialogue in load_dialogues(file, strip_whitespace):
                if dialogue.id in first_file:
                    raise DataError(
                        f"{file}: id {dialogue.id!r} is also in {first_file[dialogue.id]}; ids must be unique"
                    )
                first_file[dialogue.id] = file
                dialogues.append(dialogue)
        return dialogues
    path = Path(path)
    if path.is_dir():
        raise DataError(f"{path}: is a directory; expected a .csv, .json or .jsonl file")
    loaders = {"csv": _load_csv, "json": _load_dcs_json, "jsonl": _load_dcs_jsonl}
    return loaders[data_format(path)](path, strip_whitespace)


def _strip(text: str, strip: bool) -> str:
    return text.strip() if strip else text


# --------------------------------------------------------------------------------------------------
# Text and CSV tables
# --------------------------------------------------------------------------------------------------


def _normalise_newlines(text: str) -> str:
    # The 2024 competition files use CRLF, also inside quoted fields; downstream code sees only "\n".
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _read_text(path: Path) -> str:
    """The file's text as UTF-8 (a BOM is allowed and removed), or a DataError a user can act on."""
    if not path.exists():
        raise DataError(f"{path}: file not found")
    if not path.is_file():
        raise DataError(f"{path}: not a file")
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise DataError(
            f"{path}: the file is not UTF-8 (byte 0x{data[e.start]:02x} at line {line}; "
            "cp949/EUC-KR files from Excel look like this); re-save it as UTF-8"
        ) from None


def _read_table(path: Path, required: list[str]) -> tuple[list[dict[str, str]], list[int]]:
    """Rows of a CSV as dicts, plus the line each row starts on (for error messages)."""
    text = _read_text(path)
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader, None)
        if header is None:
            raise DataError(f"{path}: the file is empty (no header row)")
        names = [name.strip() for name in header]
        seen: set[str] = set()
        for name in names:
            if name and name in seen:
                raise DataError(f"{path}: column {name!r} appears twice in the header")
            seen.add(name)
        missing = [name for name in required if name not in seen]
        if missing:
            found = ", ".join(name for name in names if name) or "(none)"
            what = f"column {missing[0]!r}" if len(missing) == 1 else "columns " + ", ".join(map(repr, missing))
            raise DataError(f"{path}: missing required {what} (columns found: {found})")

        rows: list[dict[str, str]] = []
        lines: list[int] = []
        line = reader.line_num + 1  # the line the next record starts on
        for values in reader:
            start, line = line, reader.line_num + 1
            if not values:  # a blank line between records carries nothing
                continue
            if len(values) != len(names):
                raise DataError(
                    f"{path}: row {len(rows) + 1} (line {start}) has {len(values)} fields but the header has "
                    f"{len(names)}; check for an unquoted comma or a missing quote"
                )
            # An unnamed column (the index pandas writes, as in sample_submission.csv) is ignored.
            rows.append({name: _normalise_newlines(value) for name, value in zip(names, values) if name})
            lines.append(start)
    except csv.Error as e:
        raise DataError(f"{path}: not a readable CSV near line {reader.line_num}: {e}") from None
    if not rows:
        raise DataError(f"{path}: the file has a header but no data rows")
    return rows, lines


def read_table(path: str | Path, required: list[str]) -> list[dict[str, str]]:
    """Rows of a UTF-8 CSV (BOM allowed) as dicts, after checking the file exists and has the `required` columns.

    Line ends inside fields are normalised to "\\n". An unnamed leading index column is ignored.
    Raises DataError for a missing, non-UTF-8, malformed or empty file, or a missing column.
    """
    rows, _ = _read_table(Path(path), required)
    return rows


def write_predictions(path: str | Path, ids: Iterable[str], summaries: Iterable[str]) -> None:
    """Write a `fname,summary` CSV (UTF-8, "\\n" line ends), the competition's submission columns."""
    from dialsum.writer import write_csv

    ids, summaries = list(ids), list(summaries)
    if len(ids) != len(summaries):
        raise ValueError(f"write_predictions: {len(ids)} ids but {len(summaries)} summaries")
    write_csv(path, ["fname", "summary"], zip(ids, summaries))


def write_candidates(path: str | Path, ids: Sequence[str], candidates: Sequence[Sequence[str]]) -> None:
    """A multi-candidate file: `fname,candidate,summary`, candidates 0..n-1 of each dialogue in input order."""
    from dialsum.writer import write_csv

    rows = [[fname, k, text] for fname, texts in zip(ids, candidates, strict=True) for k, text in enumerate(texts)]
    write_csv(path, ["fname", "candidate", "summary"], rows)


# --------------------------------------------------------------------------------------------------
# Competition CSV
# --------------------------------------------------------------------------------------------------

# A turn starts with `#PersonN#:` at the start of a line (spaces before the colon tolerated).
# `#Person2#` inside a sentence, or masks like `#PhoneNumber#`, are not tags and stay in the text.
_TAG = re.compile(r"^\s*(#Person\d+#)\s*:")
_EXTRA_REFERENCE = re.compile(r"^summary(\d+)$")


def parse_turns(text: str, strip_whitespace: bool = True) -> tuple[str, list[Turn]]:
    """Split a competition dialogue into (preamble, turns).

    A line starting with `#PersonN#:` begins a turn; other lines continue the current utterance
    (joined with "\\n"), or form the preamble before the first tag. Blank lines are skipped.
    Without `strip_whitespace` only the one space after `tag:` goes (the prompt writes its own); the rest of
    each line is kept as written.
    """
    preamble: list[str] = []
    turns: list[tuple[str, list[str]]] = []
    for line in _normalise_newlines(text).split("\n"):
        match = _TAG.match(line)
        if match:
            rest = line[match.end() :]
            turns.append((match.group(1), [rest.strip() if strip_whitespace else rest.removeprefix(" ")]))
        elif not line.strip():
            continue
        elif turns:
            turns[-1][1].append(_strip(line, strip_whitespace))
        else:
            preamble.append(_strip(line, strip_whitespace))
    parsed = [Turn(speaker, "\n".join(part for part in parts if part)) for speaker, parts in turns]
    return "\n".join(preamble), parsed


def reference_columns(header: Iterable[str]) -> list[str]:
    """The reference-summary columns of a competition CSV: `summary`, then `summary1`, `summary2`, ...
    in numeric order (DialogSum's hidden test set has three references per dialogue)."""
    header = list(header)
    numbered = sorted((int(m.group(1)), name) for name in header if (m := _EXTRA_REFERENCE.match(name)))
    return (["summary"] if "summary" in header else []) + [name for _, name in numbered]


def load_references(path: str | Path) -> dict[str, list[str]]:
    """fname → reference summaries, from a competition CSV (only `fname` and the reference columns are
    needed) or a DCS JSON/JSONL; for scoring a predictions file against it."""
    path = Path(path)
    if is_dcs(path):
        return {d.id: list(d.references) for d in load_dialogues(path)}
    table = read_table(path, required=["fname"])
    columns = reference_columns(table[0])
    if not columns:
        raise DataError(
            f"{path}: no reference column (expected 'summary' or 'summary1', 'summary2', ...); is this a test file?"
        )
    references: dict[str, list[str]] = {}
    for number, row in enumerate(table, start=1):
        fname = row["fname"].strip()
        if fname in references:
            raise DataError(f"{path}: row {number}: duplicate fname {fname!r}")
        references[fname] = [row[c].strip() for c in columns if row[c].strip()]
    return references


def load_topics(path: str | Path) -> dict[str, str | None]:
    """fname → topic of a labelled file (the CSV's optional `topic` column, a DCS record's subject keywords): what
    stratifies the public/private estimate. Missing topics are None."""
    path = Path(path)
    if is_dcs(path):
        return {d.id: d.topic for d in load_dialogues(path)}
    table = read_table(path, required=["fname"])
    return {row["fname"].strip(): (row.get("topic") or "").strip() or None for row in table}


def untagged(dialogues: list[Dialogue]) -> list[str]:
    """Ids of dialogues with no `#PersonN#:` turn: read as one untagged text, legal but usually a wrong column."""
    return [d.id for d in dialogues if not d.turns]


def _load_csv(path: Path, strip_whitespace: bool = True) -> list[Dialogue]:
    rows, lines = _read_table(path, ["fname", "dialogue"])
    columns = reference_columns(rows[0])

    dialogues: list[Dialogue] = []
    first_row: dict[str, int] = {}
    for number, (row, line) in enumerate(zip(rows, lines), start=1):
        id_ = row["fname"].strip()
        where = f"{path} row {number} (line {line}" + (f", fname={id_})" if id_ else ")")
        if not id_:
            raise DataError(f"{where}: field 'fname' is empty")
        if id_ in first_row:
            raise DataError(f"{where}: duplicate fname {id_!r}, first seen at row {first_row[id_]}")
        first_row[id_] = number

        text = row["dialogue"]
        if not text.strip():
            raise DataError(f"{where}: field 'dialogue' is empty")
        for name, value in row.items():
            if value and "\x00" in value:  # a NUL byte: a binary or corrupted file, never text of a dialogue
                raise DataError(f"{where}: field {name!r} holds a NUL byte at character {value.index(chr(0)) + 1}")
        preamble, turns = parse_turns(text, strip_whitespace)
        if not preamble.strip() and not any(turn.utterance.strip() for turn in turns):
            raise DataError(f"{where}: field 'dialogue' has speaker tags but no text")

        references = [_strip(row[name], strip_whitespace) for name in columns if row[name].strip()]
        topic = _strip(row.get("topic", ""), strip_whitespace) if row.get("topic", "").strip() else None
        source = row.get("source", "").strip() or None
        dialogues.append(
            Dialogue(id=id_, turns=turns, topic=topic, references=references, preamble=preamble, source=source)
        )
    return dialogues


# --------------------------------------------------------------------------------------------------
# Korean_DCS JSON / JSONL
# --------------------------------------------------------------------------------------------------


def _load_dcs_json(path: Path, strip_whitespace: bool = True) -> list[Dialogue]:
    text = _read_text(path)
    try:
        records = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: invalid JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
    if not isinstance(records, list):
        raise DataError(f"{path}: expected a JSON list of records, got {_json_type(records)}")
    if not records:
        raise DataError(f"{path}: the JSON list is empty (no records)")
    located = [(f"record {i}", record) for i, record in enumerate(records, start=1)]
    return _dcs_dialogues(path, located, strip_whitespace)


def _load_dcs_jsonl(path: Path, strip_whitespace: bool = True) -> list[Dialogue]:
    text = _read_text(path)
    located: list[tuple[str, Any]] = []
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            located.append((f"line {number}", json.loads(line)))
        except json.JSONDecodeError as e:
            raise DataError(f"{path} line {number}: invalid JSON at column {e.colno}: {e.msg}") from None
    if not located:
        raise DataError(f"{path}: the file is empty (no records)")
    return _dcs_dialogues(path, located, strip_whitespace)


def _dcs_dialogues(path: Path, located: list[tuple[str, Any]], strip_whitespace: bool = True) -> list[Dialogue]:
    dialogues: list[Dialogue] = []
    first_seen: dict[str, str] = {}
    for location, record in located:
        dialogue = _dcs_dialogue(f"{path} {location}", record, strip_whitespace)
        if dialogue.id in first_seen:
            raise DataError(
                f"{path} {location} (id={dialogue.id}): duplicate id {dialogue.id!r}, "
                f"first seen at {first_seen[dialogue.id]}"
            )
        first_seen[dialogue.id] = location
        dialogues.append(dialogue)
    return dialogues


def _dcs_dialogue(where: str, record: Any, strip_whitespace: bool = True) -> Dialogue:
    """One Korean_DCS record:
    {"id", "input": {"conversation": [{"speaker", "utterance"}], "subject_keyword"}, "output"}."""
    if not isinstance(record, dict):
        raise DataError(f"{where}: expected a JSON object, got {_json_type(record)}")
    id_ = record.get("id")
    if id_ is None:
        raise DataError(f"{where}: field 'id' is missing")
    if not isinstance(id_, str) or not id_.strip():
        raise DataError(f"{where}: field 'id' must be a non-empty string, got {_json_type(id_)}")
    id_ = id_.strip()
    where = f"{where} (id={id_})"

    input_ = record.get("input")
    if not isinstance(input_, dict):
        what = "is missing" if input_ is None else f"must be an object, got {_json_type(input_)}"
        raise DataError(f"{where}: field 'input' {what}")
    conversation = input_.get("conversation")
    if conversation is None:
        raise DataError(f"{where}: field 'input.conversation' is missing")
    if not isinstance(conversation, list):
        raise DataError(f"{where}: field 'input.conversation' must be a list, got {_json_type(conversation)}")
    if not conversation:
        raise DataError(f"{where}: field 'input.conversation' is empty")

    # Consecutive utterances by one speaker stay separate turns, as in the source.
    turns: list[Turn] = []
    for i, item in enumerate(conversation):
        name = f"input.conversation[{i}]"
        if not isinstance(item, dict):
            raise DataError(f"{where}: field {name!r} must be an object, got {_json_type(item)}")
        for key in ("speaker", "utterance"):
            if key not in item:
                raise DataError(f"{where}: field '{name}.{key}' is missing")
            if not isinstance(item[key], str):
                raise DataError(f"{where}: field '{name}.{key}' must be a string, got {_json_type(item[key])}")
        utterance = _normalise_newlines(item["utterance"])
        turns.append(Turn(_strip(item["speaker"], strip_whitespace), _strip(utterance, strip_whitespace)))
    if not any(turn.utterance.strip() for turn in turns):
        raise DataError(f"{where}: field 'input.conversation' has no text in any utterance")

    keywords = input_.get("subject_keyword")
    if keywords is None:
        topic = None
    elif isinstance(keywords, str):
        topic = _strip(keywords, strip_whitespace) if keywords.strip() else None
    elif isinstance(keywords, list) and all(isinstance(k, str) for k in keywords):
        # the baseline's `", ".join(subject_keyword)`; stripping also drops empty keywords
        kept = [_strip(k, strip_whitespace) for k in keywords if k.strip()]
        topic = ", ".join(kept) or None
    else:
        raise DataError(f"{where}: field 'input.subject_keyword' must be a string or a list of strings")

    output = record.get("output")
    if output is None:
        references = []
    elif isinstance(output, str):
        references = [_strip(output, strip_whitespace)] if output.strip() else []
    else:
        raise DataError(f"{where}: field 'output' must be a string, got {_json_type(output)}")
    return Dialogue(id=id_, turns=turns, topic=topic, references=references)


def _json_type(value: Any) -> str:
    names = {dict: "object", list: "list", str: "string", bool: "boolean", int: "number", float: "number"}
    return "null" if value is None else names.get(type(value), type(value).__name__)
