"""compare.html: the same dev dialogues side by side for 2-4 runs, each run's summary highlighted against the
reference, the per-row differences sortable, and where each run wins; built from the pieces of report.html."""

from __future__ import annotations

import html
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dialsum.data import Dialogue
from dialsum.htmlreport import (
    FLAGS,
    PAGE_SIZE,
    _bucket_order,
    _dialogues_of,
    _number,
    _page,
    _row_flags,
    highlighted,
    page_rows,
)
from dialsum.schemes import get_scheme


def compare_page(runs: list[dict[str, Any]], dialogues: dict[str, Dialogue], tokenizer: str = "kiwi") -> str:
    """2-4 runs on the same dialogues: each run's ranking score, its difference from the first run, predictions side
    by side (highlighted against the reference), sorted by where the runs disagree most; each run's wins and losses
    against the first. `runs`: {"name", "summary" (dev_scores.json), "examples" (dev_per_sample.csv rows)}."""
    first = runs[0]
    scheme_names = {run["summary"].get("scheme", "kiwi") for run in runs}
    scheme = get_scheme(first["summary"].get("scheme", "kiwi"))
    key = scheme.rank_key(first["summary"])
    by_run = [{e["id"]: e for e in run["examples"]} for run in runs]
    ids = [e["id"] for e in first["examples"] if all(e["id"] in rows for rows in by_run[1:])]
    notes = []
    if len(scheme_names) > 1:
        notes.append(
            f"the runs were scored under different schemes ({', '.join(sorted(scheme_names))}): their "
            "scores are not comparable, so no differences are shown"
        )
    dropped = len(first["examples"]) - len(ids)
    if dropped:
        notes.append(f"{dropped} dialogue(s) of {first['name']} are missing from another run and are left out")
    comparable = len(scheme_names) == 1
    base = page_rows([by_run[0][i] for i in ids], dialogues, scheme.name, tokenizer, [])
    columns = [{"key": f"s{k}", "label": run["name"], "title": f"{run['name']}: {key}"} for k, run in enumerate(runs)]
    if comparable:
        columns += [
            {"key": f"d{k}", "label": f"{run['name']} − {first['name']}", "signed": True}
            for k, run in enumerate(runs)
            if k
        ]
        columns.append({"key": "spread", "label": "disagreement", "title": "highest minus lowest score across runs"})
    wins = []
    for row, id_ in zip(base, ids):
        references = row["texts"][1]
        reference_text = ["".join(piece for piece, _ in r) for r in references]
        scores = [_number(rows[id_].get(key)) for rows in by_run]
        row["values"] = {f"s{k}": v for k, v in enumerate(scores)}
        if comparable and None not in scores:
            row["values"] |= {f"d{k}": scores[k] - scores[0] for k in range(1, len(scores))}
            row["values"]["spread"] = max(scores) - min(scores)
        predictions = []
        for rows in by_run:
            prediction = str(rows[id_].get("prediction") or "")
            shown, _ = highlighted(prediction, reference_text, scheme.name, tokenizer)
            predictions.append([shown])
        row["texts"] = [*predictions, references]
        row["flags"] = {flag: any(_row_flags(rows[id_])[flag] for rows in by_run) for flag in FLAGS}
        row["search"] += " " + " ".join(str(rows[id_].get("prediction") or "").lower() for rows in by_run)
        wins.append(scores)
    tables = _wins_tables(runs, ids, wins) if comparable else ""
    payload = {
        "kind": "compare",
        "columns": columns,
        "text_columns": [f"prediction: {run['name']}" for run in runs] + ["reference(s)"],
        "rows": base,
        "flags": list(FLAGS),
        "length_buckets": sorted({r["length_bucket"] for r in base if r["length_bucket"]}, key=_bucket_order),
        "default_sort": {"key": "spread" if comparable else None, "dir": "desc"},
        "page_size": PAGE_SIZE,
    }
    title = "Run comparison: " + " vs ".join(run["name"] for run in runs)
    head = [f"<h1>{html.escape(title)}</h1>"]
    head.append(
        f"<p class='meta'>Per-row score: {html.escape(dict(scheme.columns()).get(key, key))} under scheme "
        f"<b>{html.escape(scheme.name)}</b> ({html.escape(scheme.competition)}).</p>"
    )
    head += [f"<p class='warn'>{html.escape(note)}</p>" for note in notes]
    return _page(title, "".join(head), tables, payload)


def _wins_tables(runs: list[dict], ids: list[str], scores: list[list[float | None]], shown: int = 10) -> str:
    """Per run after the first: how many dialogues it wins, loses and ties, and the largest wins and losses."""
    parts = ["<h2>Wins and losses against " + html.escape(runs[0]["name"]) + "</h2>"]
    for k in range(1, len(runs)):
        diffs = [(i, s[k] - s[0]) for i, s in zip(ids, scores) if s[0] is not None and s[k] is not None]
        better = sorted((d for d in diffs if d[1] > 0), key=lambda d: -d[1])
        worse = sorted((d for d in diffs if d[1] < 0), key=lambda d: d[1])
        tied = len(diffs) - len(better) - len(worse)
        parts.append(
            f"<p><b>{html.escape(runs[k]['name'])}</b>: better on {len(better)}, worse on {len(worse)}, "
            f"tied on {tied} of {len(diffs)} dialogues.</p>"
        )
        rows = "".join(
            f"<tr><td>{html.escape(a[0]) if a else ''}</td><td class='num better'>{f'{a[1]:+.2f}' if a else ''}</td>"
            f"<td>{html.escape(b[0]) if b else ''}</td><td class='num worse'>{f'{b[1]:+.2f}' if b else ''}</td></tr>"
            for a, b in _zip_longest(better[:shown], worse[:shown])
        )
        parts.append(
            f"<table class='scores wins' data-run='{k}'><tr><th>largest wins</th><th></th><th>largest losses</th>"
            f"<th></th></tr>{rows}</table>"
        )
    return "".join(parts)


def _zip_longest(a: list, b: list):
    for i in range(max(len(a), len(b))):
        yield (a[i] if i < len(a) else None), (b[i] if i < len(b) else None)


def write_compare_html(run_dirs: Sequence[Path], names: Sequence[str], output: Path) -> Path | None:
    """compare.html for the runs that have dev scores (at least two); None otherwise."""
    from dialsum.report import _read_examples
    from dialsum.rundir import DEV_PER_SAMPLE_FILE, load_run
    from dialsum.writer import write_text

    runs = []
    for path, name in zip(run_dirs, names):
        run = load_run(path, name)
        examples = _read_examples(Path(path) / DEV_PER_SAMPLE_FILE)
        if run.dev_scores and examples:
            runs.append({"name": name, "summary": run.dev_scores, "examples": examples, "config": run.config})
    if len(runs) < 2:
        return None
    dialogues = _dialogues_of(runs[0]["config"].get("data.dev"))
    tokenizer = runs[0]["config"].get("evaluation.tokenizer", "kiwi")
    return write_text(output, compare_page(runs[:4], dialogues, tokenizer))
