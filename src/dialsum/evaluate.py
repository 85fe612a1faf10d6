"""`dialsum evaluate`: a predictions file scored against a references file (competition CSV, or a DCS submission
against the labelled DCS file) under a scheme, ids matched and checked first, with per-row scores."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from dialsum.errors import DialsumError
from dialsum.schemes import get_scheme, score_scheme
from dialsum.scorers import DEFAULT_BERTSCORE_MODEL
from dialsum.scripts import script_key


def _read_predictions(path: Path) -> dict[str, str]:
    """fname → summary of a `fname,summary` CSV, or id → output of a DCS submission (.json/.jsonl)."""
    from dialsum.data import is_dcs, read_table
    from dialsum.submission import read_dcs_outputs

    if is_dcs(path):
        return read_dcs_outputs(path)
    predicted: dict[str, str] = {}
    for number, row in enumerate(read_table(path, required=["fname", "summary"]), start=1):
        fname = row["fname"].strip()
        if fname in predicted:
            raise DialsumError(f"{path}: row {number}: duplicate fname {fname!r}")
        predicted[fname] = row["summary"].strip()
    return predicted


def evaluate_scheme_files(
    predictions_path: str | Path,
    references_path: str | Path,
    scheme: str = "kiwi",
    tokenizer: str = "kiwi",
    forbidden_scripts: Iterable[str] | None = None,
    bertscore_model: str = DEFAULT_BERTSCORE_MODEL,
    bertscore_layers: int | None = None,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Score a predictions file against a reference file under `scheme`, joined on the ids.

    A CSV pair (`fname,summary` vs the competition CSV) or a DCS pair (a submission .json/.jsonl vs the
    labelled DCS file); a mixed pair, a missing or non-string `output`, and ids that don't match are one-line
    errors before any scoring. Returns (summary, per-row dicts with fname, prediction, reference, scores)."""
    from dialsum.data import is_dcs, load_references, load_topics
    from dialsum.metrics import _id_list
    from dialsum.submission import read_dcs_outputs

    predictions_path, references_path = Path(predictions_path), Path(references_path)
    get_scheme(scheme)
    script_key(forbidden_scripts)  # a bad script name fails before the slow part
    if is_dcs(predictions_path) != is_dcs(references_path):
        kinds = {True: "a DCS JSON/JSONL file", False: "a CSV file"}
        raise DialsumError(
            f"{predictions_path} is {kinds[is_dcs(predictions_path)]} but {references_path} is "
            f"{kinds[is_dcs(references_path)]}: score a DCS submission against the labelled DCS file, "
            "or a CSV against a CSV"
        )
    predicted = _read_predictions(predictions_path)
    if is_dcs(references_path):
        references = {id_: [output] if output else [] for id_, output in read_dcs_outputs(references_path).items()}
    else:
        references = load_references(references_path)

    missing = [f for f in references if f not in predicted]
    extra = [f for f in predicted if f not in references]
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing predictions for {_id_list(missing)}")
        if extra:
            parts.append(f"predictions for ids not in the references: {_id_list(extra)}")
        raise DialsumError(f"{predictions_path} vs {references_path}: " + "; ".join(parts))
    unlabeled = [f for f, refs in references.items() if not refs]
    if unlabeled:
        raise DialsumError(f"{references_path}: empty reference summary for {_id_list(unlabeled)}")

    ids = list(references)
    predictions = [predicted[f] for f in ids]
    refs = [references[f] for f in ids]
    topic_of = load_topics(references_path)
    summary, rows = score_scheme(
        predictions,
        refs,
        scheme,
        tokenizer,
        forbidden_scripts,
        bertscore_model,
        bertscore_layers,
        topics=[topic_of.get(f) for f in ids],
    )
    summary["predictions"] = str(predictions_path)
    summary["references"] = str(references_path)
    per_row = [
        {"fname": f, "prediction": p, "reference": r[0], **row} for f, p, r, row in zip(ids, predictions, refs, rows)
    ]
    return summary, per_row
