"""report.html and compare.html: the error-analysis pages, one self-contained file each.

A score says how much; the page shows where. Every dev dialogue with its reference(s), the prediction and its
per-row scores, sortable by any score, filterable by topic, by dialogue length and by what happened to it (empty,
trimmed, cleaned up, degenerate, foreign script), searchable by text. The morphemes that matched under the run's
scheme are highlighted in prediction and reference (what ROUGE counted), speaker tags and masks show as tags, and
a trimmed dialogue shows where its turns were cut. Breakdowns of the headline by topic and by length, each with its
bootstrap interval, and prediction length against reference length. compare.html puts 2-4 runs side by side,
sorted by where they disagree most, with each run's wins and losses against the first.

No server, no network: the style and script are inlined from `assets/`, the data is one JSON block that the script
renders with textContent only, so a dialogue holding `<`, `&` or quotes is shown as written and never run as HTML.
"""

from __future__ import annotations

import html
import json
import re
from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dialsum.data import Dialogue
from dialsum.length import dialogue_chars
from dialsum.schemes import LABELS, describe_halves, describe_interval, get_scheme, token_spans
from dialsum.uncertainty import bootstrap_interval

__all__ = ["FLAGS", "report_page", "write_evaluate_html", "write_run_html"]

ASSETS = Path(__file__).parent / "assets"
FLAGS = ("empty", "trimmed", "cleaned", "degenerate", "foreign")
PAGE_SIZE = 100  # rows drawn at once: a test set of thousands stays quick to sort and filter
LENGTH_BUCKETS = 5
TOP_TOPICS = 12  # the breakdown by topic shows the most frequent topics; the rest are one bar
_TAG = re.compile(r"#[A-Za-z]+\d*#")
_PERSON = re.compile(r"#Person\d+#")


# ---------------------------------------------------------------- texts as pieces


def segments(text: str, matched: Sequence[tuple[int, int]] = ()) -> list[list[str]]:
    """`text` as [piece, classes] pairs: 'm' where a counted token matched the other side, 'tag' on speaker tags,
    'mask' on masks (#PhoneNumber#). Offsets are code points; the browser never has to count characters."""
    if not text:
        return []
    classes: list[set[str]] = [set() for _ in text]
    for start, end in matched:
        for i in range(max(0, start), min(len(text), end)):
            classes[i].add("m")
    for found in _TAG.finditer(text):
        kind = "tag" if _PERSON.fullmatch(found.group()) else "mask"
        for i in range(found.start(), found.end()):
            classes[i].add(kind)
    pieces: list[list[str]] = []
    for char, marks in zip(text, classes):
        label = " ".join(sorted(marks))
        if pieces and pieces[-1][1] == label:
            pieces[-1][0] += char
        else:
            pieces.append([char, label])
    return pieces


def _matched(spans: list[tuple[str, int, int]], other: set[str]) -> list[tuple[int, int]]:
    return [(start, end) for token, start, end in spans if token in other]


def highlighted(prediction: str, references: list[str], scheme: str, tokenizer: str) -> tuple[list, list[list]]:
    """The prediction and each reference as pieces, the tokens (under `scheme`) that occur on the other side marked."""
    spans = token_spans([prediction, *references], scheme, tokenizer)
    predicted = {token for token, _, _ in spans[0]}
    referenced = {token for row in spans[1:] for token, _, _ in row}
    return segments(prediction, _matched(spans[0], referenced)), [
        segments(reference, _matched(row, predicted)) for reference, row in zip(references, spans[1:])
    ]


def _turn_pieces(dialogue: Dialogue) -> list[list[list[str]]]:
    turns = []
    if dialogue.preamble:
        turns.append(segments(dialogue.preamble))
    for turn in dialogue.turns:
        speaker = [[turn.speaker, "tag" if _PERSON.fullmatch(turn.speaker) else ""], [": ", ""]]
        turns.append(speaker + segments(turn.utterance))
    return turns


# ---------------------------------------------------------------- rows


def _number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if np.isfinite(number) else None


def _truthy(value: Any) -> bool:
    return str(value).strip().lower() in ("1", "true", "yes")


def _bucket_edges(values: list[float]) -> list[float]:
    if not values:
        return []
    return sorted({float(np.quantile(values, b / LENGTH_BUCKETS)) for b in range(1, LENGTH_BUCKETS)})


def _bucket(value: float, edges: list[float], unit: str) -> str:
    for edge in edges:
        if value <= edge:
            return f"≤ {edge:.0f} {unit}"
    return f"> {edges[-1]:.0f} {unit}" if edges else "all"


def _row_flags(example: dict[str, Any]) -> dict[str, bool]:
    return {
        "empty": not str(example.get("prediction") or "").strip(),
        "trimmed": (_number(example.get("turns_cut")) or 0) > 0,
        "cleaned": bool(str(example.get("cleaned") or "").strip()),
        "degenerate": _truthy(example.get("degenerate")),
        "foreign": _truthy(example.get("foreign")),
    }


def page_rows(
    examples: list[dict[str, Any]],
    dialogues: dict[str, Dialogue],
    scheme: str,
    tokenizer: str = "kiwi",
    score_keys: Sequence[str] = (),
) -> list[dict[str, Any]]:
    """One JSON row per dev example (dev_per_sample.csv's rows, or evaluate's): scores, flags, the texts as pieces,
    the dialogue's turns when the dialogue is known (`dialogues` by id; references come from there too)."""
    chars = [dialogue_chars(dialogues[e["id"]]) for e in examples if e["id"] in dialogues]
    edges = _bucket_edges(chars)
    rows = []
    for order, example in enumerate(examples):
        dialogue = dialogues.get(example["id"])
        references = list(dialogue.references) if dialogue and dialogue.references else [example.get("reference", "")]
        prediction = str(example.get("prediction") or "")
        shown_prediction, shown_references = highlighted(prediction, references, scheme, tokenizer)
        topic = str(example.get("topic") or (dialogue.topic if dialogue else "") or "").strip()
        turns = _turn_pieces(dialogue) if dialogue else []
        cut = int(_number(example.get("turns_cut")) or 0)
        words = [prediction, *references, topic, example["id"]]
        if dialogue:
            words += [t.utterance for t in dialogue.turns]
        rows.append(
            {
                "id": example["id"],
                "order": order,
                "topic": topic,
                "length_bucket": _bucket(dialogue_chars(dialogue), edges, "chars") if dialogue else "",
                "values": {key: _number(example.get(key)) for key in score_keys}
                | {"pred_chars": float(len(prediction)), "ref_chars": float(np.mean([len(r) for r in references]))},
                "flags": _row_flags(example),
                "texts": [[shown_prediction], shown_references],
                "turns": turns,
                "turns_cut": min(cut, len(turns)),
                "search": " ".join(words).lower(),
            }
        )
    return rows


def _columns(scheme_name: str) -> tuple[list[dict[str, str]], list[str]]:
    scheme = get_scheme(scheme_name)
    keys = [k for k in scheme.metrics] + [scheme.headline]
    columns = [
        {"key": k, "label": "final" if k == scheme.headline else LABELS[k], "title": dict(scheme.columns())[k]}
        for k in keys
    ]
    columns += [
        {"key": "pred_chars", "label": "pred chars", "title": "prediction length (characters)", "digits": 0},
        {"key": "ref_chars", "label": "ref chars", "title": "reference length (characters)", "digits": 0},
    ]
    return columns, keys


# ---------------------------------------------------------------- breakdowns (inline SVG)


def _group_scores(rows: list[dict], key: str, group_of) -> list[dict[str, Any]]:
    groups: dict[str, list[float]] = defaultdict(list)
    for row in rows:
        value = row["values"].get(key)
        if value is not None:
            groups[group_of(row)].append(value)
    out = []
    for label, values in groups.items():
        interval = bootstrap_interval(values, resamples=1000)
        out.append(
            {
                "label": label,
                "n": len(values),
                "mean": float(np.mean(values)),
                "low": interval["low"] if interval else None,
                "high": interval["high"] if interval else None,
            }
        )
    return out


def _bar_chart(title: str, groups: list[dict[str, Any]]) -> str:
    """Horizontal bars with the bootstrap interval as a line, each labelled with its n."""
    if not groups:
        return ""
    width, label_width, bar_height = 560, 190, 20
    top = max([g["high"] or g["mean"] for g in groups] + [1.0])
    scale = (width - label_width - 70) / top
    height = 24 + bar_height * len(groups)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img">']
    for i, g in enumerate(groups):
        y = 18 + i * bar_height
        label = html.escape(f"{g['label']} (n={g['n']})")
        parts.append(f'<text x="{label_width - 6}" y="{y + 13}" text-anchor="end" font-size="11">{label}</text>')
        parts.append(
            f'<rect x="{label_width}" y="{y + 3}" width="{g["mean"] * scale:.1f}" height="{bar_height - 6}" '
            'fill="#54aeff"/>'
        )
        if g["low"] is not None:
            parts.append(
                f'<line x1="{label_width + g["low"] * scale:.1f}" x2="{label_width + g["high"] * scale:.1f}" '
                f'y1="{y + 10}" y2="{y + 10}" stroke="#0a3069" stroke-width="2"/>'
            )
        parts.append(
            f'<text x="{label_width + max(g["high"] or 0, g["mean"]) * scale + 6:.1f}" y="{y + 13}" '
            f'font-size="11">{g["mean"]:.1f}</text>'
        )
    parts.append("</svg>")
    return f"<figure>{''.join(parts)}<figcaption>{html.escape(title)}</figcaption></figure>"


def _scatter(rows: list[dict]) -> str:
    points = [(r["values"]["ref_chars"], r["values"]["pred_chars"]) for r in rows]
    if not points:
        return ""
    size, pad = 300, 34
    top = max(max(x, y) for x, y in points) or 1.0
    scale = (size - 2 * pad) / top
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{size}" height="{size}" role="img">']
    parts.append(
        f'<line x1="{pad}" y1="{size - pad}" x2="{size - pad}" y2="{pad}" stroke="#d0d7de" stroke-dasharray="4"/>'
    )
    parts.append(f'<text x="{size / 2}" y="{size - 8}" text-anchor="middle" font-size="11">reference chars</text>')
    parts.append(
        f'<text x="12" y="{size / 2}" text-anchor="middle" font-size="11" '
        f'transform="rotate(-90 12 {size / 2})">prediction chars</text>'
    )
    for x, y in points:
        parts.append(f'<circle cx="{pad + x * scale:.1f}" cy="{size - pad - y * scale:.1f}" r="2" fill="#0969da"/>')
    parts.append(f'<text x="{size - pad}" y="{size - pad + 14}" text-anchor="end" font-size="10">{top:.0f}</text>')
    parts.append("</svg>")
    return (
        f"<figure>{''.join(parts)}<figcaption>prediction length against reference length "
        "(dashed: equal)</figcaption></figure>"
    )


def breakdowns(rows: list[dict], key: str, label: str) -> str:
    """The headline by topic, by dialogue length and by summary length (interval as a line), and the lengths."""
    counts = Counter(row["topic"] or "(no topic)" for row in rows)
    frequent = {topic for topic, n in counts.most_common(TOP_TOPICS) if n > 1}
    by_topic = sorted(
        _group_scores(
            rows,
            key,
            lambda r: (r["topic"] or "(no topic)") if (r["topic"] or "(no topic)") in frequent else "other topics",
        ),
        key=lambda g: -g["n"],
    )
    by_length = sorted(
        _group_scores([r for r in rows if r["length_bucket"]], key, lambda r: r["length_bucket"]),
        key=lambda g: _bucket_order(g["label"]),
    )
    edges = _bucket_edges([r["values"]["ref_chars"] for r in rows])
    by_summary = sorted(
        _group_scores(rows, key, lambda r: _bucket(r["values"]["ref_chars"], edges, "chars")),
        key=lambda g: _bucket_order(g["label"]),
    )
    charts = [
        _bar_chart(
            f"{label} by topic ({TOP_TOPICS} most frequent topics with 2+ dialogues; the rest as one)", by_topic
        ),
        _bar_chart(f"{label} by dialogue length", by_length),
        _bar_chart(f"{label} by reference summary length", by_summary),
        _scatter(rows),
    ]
    return '<div class="charts">' + "".join(charts) + "</div>"


def _bucket_order(label: str) -> float:
    number = re.search(r"[\d.]+", label)
    return float(number.group()) + (0.5 if label.startswith(">") else 0) if number else 0.0


# ---------------------------------------------------------------- pages


def _data_block(payload: dict[str, Any]) -> str:
    """The page's data as JSON inside a script element: '<', '>' and '&' escaped so no text can close the element."""
    text = json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
    text = text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    return f'<script type="application/json" id="report-data">{text}</script>'


def _page(title: str, head: str, body: str, payload: dict[str, Any]) -> str:
    style = (ASSETS / "report.css").read_text(encoding="utf-8")
    script = (ASSETS / "report.js").read_text(encoding="utf-8")
    controls = (
        '<div class="controls"><input id="search" type="search" placeholder="search text, id, topic">'
        '<select id="topic"><option value="">all topics</option></select>'
        '<select id="length"><option value="">all lengths</option></select>'
        '<span id="flags"></span><span id="count"></span></div>'
    )
    table = '<table id="rows"><thead><tr></tr></thead><tbody></tbody></table>'
    pager = (
        '<div class="pager"><button id="prev">◀ previous</button><span id="page"></span>'
        '<button id="next">next ▶</button></div>'
    )
    return (
        '<!doctype html>\n<html lang="ko"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{html.escape(title)}</title><style>{style}</style></head><body>"
        f"{head}{body}<h2>Dialogues</h2><p class='meta'>Click a header to sort (lowest first, again for highest); "
        "click a row for its dialogue. Highlighted: the morphemes that match the other side under the scheme.</p>"
        f"{controls}{table}{pager}{_data_block(payload)}<script>{script}</script></body></html>\n"
    )


def _score_table(summary: dict[str, Any]) -> str:
    scheme = get_scheme(summary.get("scheme", "kiwi"))
    cells = []
    for key, label in scheme.columns():
        value = summary.get(key)
        shown = "not computed" if value is None else f"{value:.2f}"
        strong = key == scheme.headline
        cells.append(
            f"<tr><th>{'<b>' if strong else ''}{html.escape(label)}{'</b>' if strong else ''}</th>"
            f"<td class='num'>{html.escape(shown)}</td></tr>"
        )
    for label, text in (("95 % interval", describe_interval(summary)), ("public / private", describe_halves(summary))):
        if text:
            cells.append(f"<tr><th>{label}</th><td>{html.escape(text)}</td></tr>")
    return "<table class='scores'>" + "".join(cells) + "</table>"


def _header(title: str, summary: dict[str, Any], subtitle: str = "") -> str:
    scheme = get_scheme(summary.get("scheme", "kiwi"))
    lines = [f"<h1>{html.escape(title)}</h1>"]
    if subtitle:
        lines.append(f"<p class='meta'>{html.escape(subtitle)}</p>")
    lines.append(
        f"<p class='meta'>Scheme <b>{html.escape(scheme.name)}</b>: {html.escape(scheme.competition)}. "
        f"Analyzer: {html.escape(str(summary.get('analyzer', '')))}.</p>"
    )
    degeneracy = summary.get("degeneracy")
    if isinstance(degeneracy, dict) and degeneracy.get("degenerate"):
        lines.append(
            "<p class='warn'>The predictions are degenerate (repetition / tag spam): the scores are not to be "
            "trusted.</p>"
        )
    for note in summary.get("notes", []):
        lines.append(f"<p class='meta'>note: {html.escape(str(note))}</p>")
    return "".join(lines) + _score_table(summary)


def report_page(
    title: str,
    summary: dict[str, Any],
    examples: list[dict[str, Any]],
    dialogues: dict[str, Dialogue],
    tokenizer: str = "kiwi",
    subtitle: str = "",
) -> str:
    """One run's (or one predictions file's) page."""
    scheme = get_scheme(summary.get("scheme", "kiwi"))
    columns, keys = _columns(scheme.name)
    rows = page_rows(examples, dialogues, scheme.name, tokenizer, keys)
    ranked = scheme.rank_key(summary)
    label = dict(scheme.columns()).get(ranked, ranked)
    payload = {
        "kind": "report",
        "columns": columns,
        "text_columns": ["prediction", "reference(s)"],
        "rows": rows,
        "flags": list(FLAGS),
        "length_buckets": sorted({r["length_bucket"] for r in rows if r["length_bucket"]}, key=_bucket_order),
        "default_sort": {"key": None, "dir": "asc"},
        "page_size": PAGE_SIZE,
    }
    body = f"<h2>Breakdowns</h2>{breakdowns(rows, ranked, label)}"
    return _page(title, _header(title, summary, subtitle), body, payload)


# ---------------------------------------------------------------- writing


def _dialogues_of(path: str | Path | None) -> dict[str, Dialogue]:
    """The dialogues of a labelled file by id, or none when it cannot be read (a fname,summary references file)."""
    from dialsum.data import load_dialogues
    from dialsum.errors import DialsumError

    if not path:
        return {}
    try:
        return {d.id: d for d in load_dialogues(path)}
    except DialsumError:
        return {}


def write_run_html(run_dir: str | Path) -> Path | None:
    """RUN_DIR/report.html from the run's dev_scores.json, dev_per_sample.csv and its dev file; None without dev
    scores."""
    from dialsum.report import _read_examples
    from dialsum.rundir import DEV_PER_SAMPLE_FILE, REPORT_HTML_FILE, load_run
    from dialsum.writer import write_text

    run_dir = Path(run_dir)
    run = load_run(run_dir)
    examples = _read_examples(run_dir / DEV_PER_SAMPLE_FILE)
    if not run.dev_scores or not examples:
        return None
    dialogues = _dialogues_of(run.config.get("data.dev"))
    tokenizer = run.config.get("evaluation.tokenizer", "kiwi")
    page = report_page(f"Run report: {run.name}", run.dev_scores, examples, dialogues, tokenizer, str(run_dir))
    return write_text(run_dir / REPORT_HTML_FILE, page)


def write_evaluate_html(
    path: str | Path,
    summary: dict[str, Any],
    per_row: list[dict[str, Any]],
    references: str | Path,
    tokenizer: str = "kiwi",
) -> Path:
    """`dialsum evaluate --html PATH`: the page for a predictions file against its references."""
    from dialsum.writer import write_text

    examples = [{"id": row["fname"], **{k: v for k, v in row.items() if k != "fname"}} for row in per_row]
    page = report_page(
        f"Evaluation: {Path(summary.get('predictions', 'predictions')).name}",
        summary,
        examples,
        _dialogues_of(references),
        tokenizer,
        f"{summary.get('predictions', '')} vs {references}",
    )
    return write_text(path, page)
