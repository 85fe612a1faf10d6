"""Scoring schemes: each competition's own recipe, so a printed score is comparable with its leaderboard.

- `kiwi` (default): ROUGE-1/2/L F1 on Kiwi morpheme forms with rouge-score (clipped counts), mean over
  references; dialsum's own scale, unchanged (see metrics.py).
- `dialogsum`: DialogSum-Korean (Upstage, AI Stages). Mecab morphemes joined by spaces, then the arithmetic of
  the organizers' `rouge` 1.0.1 package: text split into sentences on '.', n-grams counted as *sets*,
  summary-level ROUGE-L (union LCS over sentences), F = 2PR/(P+R+1e-8); mean over references and rows.
  The headline is the leaderboard's final score: the MEAN of the three F1 ×100 (published team finals reproduce
  exactly: 0.5825 / 0.3932 / 0.5027 -> 49.28); the sum many write-ups quote is reported beside it, as the sum.
- `dcs`: Korean_DCS (NIKL). The mean of ROUGE-1 F (each text cut to its first 1,000 whitespace-separated words as
  the official scorer does, lowercased, every character outside [A-Za-z0-9가-힣] replaced by a space, Mecab
  morphemes, clipped counts, mean of per-row F), BERTScore F1 with bert-base-multilingual-cased and BLEURT-20,
  the last two against the first reference. A model that cannot be loaded is named in `notes` and its metric is
  None; the headline is then None, never a partial mean, and what ranks (checkpoints, trials, examples) is the
  scheme's `fallback`, ROUGE-1, said as such.

Each `Scheme` declares its vocabulary (metric keys, headline key and label, the table's columns, what may be
missing); every other module reads it from here. Every result also carries the headline's 95 % bootstrap interval
and the public/private halves (dialsum.uncertainty). The analyzer changes a score by a factor of 3, so every
result carries `scheme` and `analyzer`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib import metadata
from statistics import fmean
from typing import Any

from dialsum.errors import DialsumError
from dialsum.metrics import (
    ROUGE_TYPES,
    _normalise_references,
    score_rows,
    score_with_rows,
    tokenize_texts,
)
from dialsum.scorers import DEFAULT_BERTSCORE_MODEL, _rouge_101, _sentences, bertscore_f1
from dialsum.scripts import foreign_script_chars, script_key

__all__ = [
    "DEFAULT_BERTSCORE_MODEL",
    "SCHEMES",
    "SHORT_LABELS",
    "Scheme",
    "analyzer_name",
    "dcs_clean",
    "LABELS",
    "describe_halves",
    "describe_interval",
    "format_scheme_table",
    "get_scheme",
    "print_scheme_scores",
    "score_dialogues",
    "score_scheme",
    "scheme_tokens",
    "token_spans",
]

BLEURT_UNAVAILABLE = (
    "BLEURT-20: not computed: google-research/bleurt is not on PyPI and its PyTorch port bleurt-pytorch 0.0.1 "
    "does not import with transformers 5; the DCS headline (mean of three) needs it"
)


# How a person names each key of a result (tables, report.md, compare, the model card).
LABELS = {
    "rouge1": "ROUGE-1 F1",
    "rouge2": "ROUGE-2 F1",
    "rougeL": "ROUGE-L F1",
    "rouge_sum": "ROUGE sum (R1+R2+RL)",
    "bertscore": "BERTScore F1",
    "bleurt": "BLEURT-20",
    "final_score": "final score",
}
# The same, short: column headers of the wide tables (kfold, screen, compare).
SHORT_LABELS = {
    "rouge1": "R1",
    "rouge2": "R2",
    "rougeL": "RL",
    "rouge_sum": "sum",
    "bertscore": "BERTScore",
    "bleurt": "BLEURT",
    "final_score": "final",
}
DCS_WORD_LIMIT = 1000  # the official NIKL scorer keeps the first 1,000 whitespace-separated words of each text


@dataclass(frozen=True)
class Scheme:
    """One competition's scoring vocabulary: every module that shows, compares or ranks scores reads it here."""

    name: str
    competition: str  # which leaderboard the numbers match, and how it ranks
    metrics: tuple[str, ...]  # the per-row metrics, each also averaged into the corpus result
    headline_label: str  # what the headline is, as a person says it
    headline: str = "final_score"  # the key of the result the competition ranks by
    extras: tuple[str, ...] = ()  # corpus keys shown beside the headline (the sum)
    optional: tuple[str, ...] = ()  # metrics that can be missing (None: the model could not be loaded)
    fallback: str | None = None  # what ranks when the headline is missing

    @property
    def keys(self) -> tuple[str, ...]:
        """Every score key of a result under this scheme, in table order, the headline last."""
        return (*self.metrics, *self.extras, self.headline)

    def columns(self) -> list[tuple[str, str]]:
        """(key, label) of each score column of a table, the headline last."""
        return [(key, self.headline_label if key == self.headline else LABELS[key]) for key in self.keys]

    def rank_key(self, result: dict[str, Any]) -> str:
        """The key that ranks results (runs, checkpoints, trials) or rows: the headline, or where it is missing the
        fallback."""
        if result.get(self.headline) is None and self.fallback is not None:
            return self.fallback
        return self.headline

    def rank_value(self, result: dict[str, Any]) -> float | None:
        return result.get(self.rank_key(result))


SCHEMES: dict[str, Scheme] = {
    "kiwi": Scheme(
        "kiwi",
        "none (dialsum's own scale: rouge-score arithmetic on Kiwi forms)",
        ROUGE_TYPES,
        "final score (mean of ROUGE-1/2/L F1)",
        extras=("rouge_sum",),
    ),
    "dialogsum": Scheme(
        "dialogsum",
        "DialogSum-Korean (Upstage, AI Stages): ranked by the mean of ROUGE-1/2/L F1 x 100",
        ROUGE_TYPES,
        "leaderboard final score (mean of ROUGE-1/2/L F1)",
        extras=("rouge_sum",),
    ),
    "dcs": Scheme(
        "dcs",
        "Korean_DCS (NIKL): ranked by the mean of ROUGE-1, BERTScore and BLEURT-20",
        ("rouge1", "bertscore", "bleurt"),
        "final score (mean of ROUGE-1, BERTScore, BLEURT-20)",
        optional=("bertscore", "bleurt"),
        fallback="rouge1",
    ),
}


def get_scheme(name: str) -> Scheme:
    if name not in SCHEMES:
        raise DialsumError(f"unknown scoring scheme {name!r}; valid schemes: {', '.join(SCHEMES)}")
    return SCHEMES[name]


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def analyzer_name(scheme: str, tokenizer: str = "kiwi") -> str:
    """What split the texts into tokens, with versions: part of every score table, dev_scores.json and report."""
    if scheme == "kiwi" and tokenizer != "mecab":
        if tokenizer == "whitespace":
            return "whitespace split"
        return f"Kiwi morpheme forms (kiwipiepy {_version('kiwipiepy')})"
    mecab = (
        f"Mecab morphemes (python-mecab-ko {_version('python-mecab-ko')}, "
        f"mecab-ko-dic {_version('python-mecab-ko-dic')})"
    )
    if scheme == "dcs":
        return "lowercase, [^A-Za-z0-9가-힣] → space, " + mecab
    return mecab


# --------------------------------------------------------------------------------------------------
# Tokens per scheme (also what MBR ensembling compares)
# --------------------------------------------------------------------------------------------------

_DCS_OUTSIDE = re.compile(r"[^A-Za-z0-9가-힣]")


def dcs_clean(text: str) -> str:
    """The NIKL preprocessing: the first 1,000 whitespace-separated words (the official scorer's length limit),
    lowercased, every character outside [A-Za-z0-9가-힣] a space."""
    return _DCS_OUTSIDE.sub(" ", " ".join(text.split()[:DCS_WORD_LIMIT]).lower())


def _require_mecab(scheme: str) -> None:
    try:
        import mecab  # noqa: F401
    except ImportError:
        raise DialsumError(
            f"scheme {scheme!r} needs Mecab (python-mecab-ko with its bundled mecab-ko-dic), which is not installed: "
            "pip install 'dialsum[mecab]' (or use scheme 'kiwi')"
        ) from None


def require_scheme(name: str) -> None:
    """The scheme exists and its analyzer is installed: checked before any expensive step that ends in scoring."""
    scheme = get_scheme(name)
    if scheme.name in ("dialogsum", "dcs"):
        _require_mecab(scheme.name)


def scheme_tokens(texts: Sequence[str], scheme: str = "kiwi", tokenizer: str = "kiwi") -> list[tuple[str, ...]]:
    """The tokens each scheme's ROUGE counts, per text: Kiwi forms (kiwi; or `tokenizer`), Mecab morphemes
    (dialogsum; '.' stays a token here, the sentence split happens in the arithmetic), cleaned Mecab morphemes
    (dcs)."""
    get_scheme(scheme)
    if scheme == "kiwi":
        return tokenize_texts(texts, tokenizer)
    _require_mecab(scheme)
    if scheme == "dcs":
        return tokenize_texts([dcs_clean(t) for t in texts], "mecab")
    return tokenize_texts(texts, "mecab")


def token_spans(
    texts: Sequence[str], scheme: str = "kiwi", tokenizer: str = "kiwi"
) -> list[list[tuple[str, int, int]]]:
    """For display (the error-analysis page): each token the scheme's ROUGE counts, as (token, start, end) character
    offsets into the text as written, so a page can highlight what matched. dcs tokens are those of the cleaned
    text (lowercase, non-[A-Za-z0-9가-힣] as spaces, which keeps every offset); its 1,000-word cut is not shown."""
    get_scheme(scheme)
    analyzer = tokenizer if scheme == "kiwi" else "mecab"
    if scheme != "kiwi":
        _require_mecab(scheme)
    if analyzer == "whitespace":
        return [[(m.group(), m.start(), m.end()) for m in re.finditer(r"\S+", text)] for text in texts]
    if analyzer == "kiwi":
        from dialsum.metrics import get_kiwi

        results = get_kiwi().tokenize(list(texts)) if texts else []
        return [[(t.form, t.start, t.start + t.len) for t in tokens] for tokens in results]
    from dialsum.metrics import _get_mecab

    mecab = _get_mecab()
    spans = []
    for text in texts:
        shown = _DCS_OUTSIDE.sub(" ", text.lower()) if scheme == "dcs" and len(text.lower()) == len(text) else text
        found, position = [], 0
        for surface in mecab.morphs(shown):  # located in order (Mecab's own spans skip leading spaces)
            start = shown.find(surface, position)
            if start < 0:
                continue
            found.append((surface, start, start + len(surface)))
            position = start + len(surface)
        spans.append(found)
    return spans


# --------------------------------------------------------------------------------------------------
# Scoring
# --------------------------------------------------------------------------------------------------


def _dialogsum_rows(predictions: list[str], refs: list[list[str]]) -> list[dict[str, float]]:
    texts = list(dict.fromkeys([*predictions, *(r for row in refs for r in row)]))
    sentences = {t: _sentences(tokens) for t, tokens in zip(texts, scheme_tokens(texts, "dialogsum"), strict=True)}
    rows = []
    for prediction, row_refs in zip(predictions, refs, strict=True):
        hyp = sentences[prediction]
        if not hyp:  # `rouge` raises on an empty hypothesis; here it scores 0 and is counted
            rows.append({k: 0.0 for k in ROUGE_TYPES})
            continue
        per_ref = [_rouge_101(hyp, sentences[r]) for r in row_refs]
        rows.append({k: 100.0 * fmean(s[k] for s in per_ref) for k in ROUGE_TYPES})
    return rows


def score_scheme(
    predictions: Sequence[str],
    references: Sequence[Sequence[str] | str],
    scheme: str = "kiwi",
    tokenizer: str = "kiwi",
    forbidden_scripts: Iterable[str] | None = None,
    bertscore_model: str = DEFAULT_BERTSCORE_MODEL,
    bertscore_layers: int | None = None,
    topics: Sequence[str | None] | None = None,
    model_metrics: bool = True,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(corpus summary, per-row scores) under `scheme`. `model_metrics=False` leaves dcs's BERTScore out (None,
    with a note): what training-time evaluation computes. Every summary has `scheme`, `analyzer`, `headline`
    (the key the competition ranks by) and `headline_label`, `interval` (the 95 % bootstrap interval of the
    ranking key, `uncertainty.bootstrap_interval`, with its `key`) and `halves` (public/private estimate; `topics`
    stratify it), `n`, `foreign_rate`, `empty_predictions`, `pred_len`, `ref_len`.
    `tokenizer` applies to the kiwi scheme only (the others fix their analyzer)."""
    definition = get_scheme(scheme)
    if scheme != "kiwi" and tokenizer != "kiwi":
        raise DialsumError(f"tokenizer {tokenizer!r} applies to scheme 'kiwi' only; scheme {scheme!r} uses Mecab")
    predictions = ["" if p is None else str(p) for p in predictions]
    if topics is not None and len(topics) != len(predictions):
        raise ValueError(f"{len(topics)} topics for {len(predictions)} predictions")
    if scheme == "kiwi":
        summary, rows = score_with_rows(predictions, references, tokenizer, forbidden_scripts)
        summary.update(scheme="kiwi", analyzer=analyzer_name("kiwi", tokenizer))
        _with_degeneracy(summary, rows, predictions, _normalise_references(predictions, references))
        return _with_uncertainty(summary, rows, definition, topics), rows

    refs = _normalise_references(predictions, references)
    scripts = script_key(forbidden_scripts)
    notes: list[str] = []
    if scheme == "dialogsum":
        rows = _dialogsum_rows(predictions, refs)
        for row in rows:
            row["final_score"] = fmean(row[k] for k in ROUGE_TYPES)
    else:  # dcs: ROUGE-1 is rouge-score's clipped arithmetic on the cleaned Mecab morphemes
        cleaned_refs = [[dcs_clean(r) for r in row] for row in refs]
        for number, row in enumerate(cleaned_refs, start=1):
            if not any(r.strip() for r in row):
                raise DialsumError(f"row {number}: the reference has no letter or digit left after the DCS cleaning")
        scheme_tokens([dcs_clean(p) for p in predictions], "dcs")  # fails early, with one line, without Mecab
        rouge = score_rows([dcs_clean(p) for p in predictions], cleaned_refs, "mecab", forbidden_scripts=[])
        rows = [{"rouge1": r["rouge1"]} for r in rouge]
        if model_metrics:
            bert, note = bertscore_f1(predictions, [row[0] for row in refs], bertscore_model, bertscore_layers)
        else:
            bert, note = None, "BERTScore: not computed (left out at training-time evaluation)"
        notes += [note] if note else []
        notes.append(BLEURT_UNAVAILABLE)
        for index, row in enumerate(rows):
            row["bertscore"] = bert[index] if bert is not None else None
            row["bleurt"] = None
            parts = [row[k] for k in definition.metrics]
            row["final_score"] = fmean(parts) if all(v is not None for v in parts) else None
    for prediction, row in zip(predictions, rows):
        chars = foreign_script_chars(prediction, scripts)
        row["foreign"] = bool(chars)
        row["foreign_chars"] = "".join(sorted(chars))

    n = len(rows)
    if n == 0:
        raise DialsumError("nothing to score: no predictions")
    summary: dict[str, Any] = {}
    for key in definition.metrics:
        values = [row[key] for row in rows]
        summary[key] = fmean(values) if all(v is not None for v in values) else None
    if scheme == "dialogsum":
        summary["rouge_sum"] = sum(summary[k] for k in ROUGE_TYPES)
        summary["final_score"] = summary["rouge_sum"] / len(ROUGE_TYPES)
    else:
        parts = [summary[k] for k in definition.metrics]
        summary["final_score"] = fmean(parts) if all(v is not None for v in parts) else None
    summary["foreign_rate"] = 100.0 * sum(row["foreign"] for row in rows) / n
    summary["empty_predictions"] = sum(1 for p in predictions if not p.strip())
    summary["pred_len"] = fmean(len(p) for p in predictions)
    summary["ref_len"] = fmean(fmean(len(r) for r in row) for row in refs)
    summary["n"] = n
    summary.update(scheme=scheme, analyzer=analyzer_name(scheme))
    if scheme == "dcs":
        summary["bertscore_model"] = bertscore_model
        summary["word_limit"] = DCS_WORD_LIMIT
    if notes:
        summary["notes"] = notes
    _with_degeneracy(summary, rows, predictions, refs)
    return _with_uncertainty(summary, rows, definition, topics), rows


def _with_degeneracy(
    summary: dict[str, Any], rows: list[dict[str, Any]], predictions: list[str], refs: list[list[str]]
) -> None:
    """The repetition / tag-spam figure beside the score (dialsum.degeneracy), and `degenerate` per row."""
    from dialsum.degeneracy import degeneracy

    summary["degeneracy"], flags = degeneracy(predictions, refs)
    for row, flag in zip(rows, flags, strict=True):
        row["degenerate"] = flag["degenerate"]


def _with_uncertainty(
    summary: dict[str, Any], rows: list[dict[str, Any]], definition: Scheme, topics: Sequence[str | None] | None
) -> dict[str, Any]:
    """The headline's name, its 95 % bootstrap interval and the public/private halves, from the per-row scores
    (every scheme's corpus score is the mean of its rows'). Where the headline is missing (dcs offline), both are
    computed for the fallback and say so by their `key`."""
    from dialsum.uncertainty import bootstrap_interval, halves

    summary["headline"] = definition.headline
    summary["headline_label"] = definition.headline_label
    key = definition.rank_key(summary)
    values = [row[key] for row in rows]
    if not values or any(v is None for v in values):
        summary["interval"] = summary["halves"] = None
        return summary
    interval = bootstrap_interval(values)
    summary["interval"] = {"key": key, **interval} if interval else None
    split = halves(values, topics if topics is not None else [None] * len(values))
    summary["halves"] = {"key": key, **split} if split else None
    return summary


def score_dialogues(
    predictions: Sequence[str],
    dialogues: Sequence[Any],
    evaluation: Any,
    forbidden_scripts: Iterable[str] | None = None,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Scores of predictions for labelled dialogues (data.Dialogue) under the config's `evaluation` section (its
    scheme, analyzer, BERTScore model), plus the per-row scores."""
    e = evaluation
    return score_scheme(
        predictions,
        [d.references for d in dialogues],
        e.scheme,
        e.tokenizer,
        forbidden_scripts,
        e.bertscore_model,
        e.bertscore_layers,
        topics=[d.topic for d in dialogues],
    )


# --------------------------------------------------------------------------------------------------
# Files and display
# --------------------------------------------------------------------------------------------------


def describe_interval(result: dict[str, Any]) -> str | None:
    """'49.28 [48.10, 50.45] (95 % bootstrap over 499 dialogues)' for the result's ranking key, or None."""
    interval = result.get("interval")
    if not interval or result.get(interval["key"]) is None:
        return None
    return (
        f"{result[interval['key']]:.2f} [{interval['low']:.2f}, {interval['high']:.2f}] "
        f"({interval['level']:.0%} bootstrap over {result.get('n', '?')} dialogues)"
    )


def describe_halves(result: dict[str, Any]) -> str | None:
    """'public 48.9 / private 49.7 (topic-stratified halves of dev)', or None."""
    split = result.get("halves")
    if not split:
        return None
    return (
        f"public {split['public']:.2f} / private {split['private']:.2f} (difference {split['difference']:+.2f}; "
        f"{split['n_public']} + {split['n_private']} dialogues, halves of dev stratified by topic)"
    )


def format_scheme_table(result: dict[str, Any], title: str | None = None):
    """A rich Table of a `score_scheme` result: the scheme's metrics, its headline in bold with its 95 % interval
    and the public/private halves, the scheme and the analyzer, diagnostics."""
    from rich.markup import escape
    from rich.table import Table

    from dialsum.degeneracy import describe_degeneracy

    scheme = get_scheme(result.get("scheme", "kiwi"))
    table = Table(title=title, show_header=True, header_style="bold")
    table.add_column("metric")
    table.add_column("value", justify="right")

    def value(key: str) -> str:
        return "not computed" if result.get(key) is None else f"{result[key]:.2f}"

    for key, label in scheme.columns():
        if key == scheme.headline:
            table.add_row(f"[bold]{label}[/bold]", f"[bold]{value(key)}[/bold]")
        else:
            table.add_row(label, value(key))
    interval, split = describe_interval(result), describe_halves(result)
    if interval:
        ranked = result["interval"]["key"]
        table.add_row(f"95 % interval of {LABELS[ranked] if ranked != scheme.headline else 'the headline'}", interval)
    if split:
        table.add_row("public / private estimate", split)
    degenerate = describe_degeneracy(result)
    if degenerate:
        style = "bold red" if result["degeneracy"].get("degenerate") else ""
        table.add_row(f"[{style}]degeneracy[/]" if style else "degeneracy", escape(degenerate))
    table.add_section()
    table.add_row("scheme", f"{scheme.name} — {scheme.competition}")
    table.add_row("analyzer", str(result.get("analyzer", "")))
    table.add_row("foreign-script predictions", f"{result.get('foreign_rate', 0.0):.1f}%")
    if "empty_predictions" in result:
        table.add_row("empty predictions", str(result["empty_predictions"]))
    if "pred_len" in result:
        table.add_row("mean length (chars) pred / ref", f"{result['pred_len']:.1f} / {result['ref_len']:.1f}")
    table.add_row("rows", str(result.get("n", "")))
    return table


def print_scheme_scores(result: dict[str, Any], title: str | None = None, console=None) -> None:
    """The table, then one line per metric that could not be computed (never a silent zero)."""
    from rich.console import Console

    console = console or Console()
    console.print(format_scheme_table(result, title))
    if (result.get("degeneracy") or {}).get("degenerate"):
        console.print(
            "warning: the predictions are DEGENERATE (repetition / tag spam): this score is not to be trusted",
            style="bold red",
            soft_wrap=True,
            markup=False,
            highlight=False,
        )
    for note in result.get("notes", []):
        console.print(f"note: {note}", soft_wrap=True, markup=False, highlight=False)
