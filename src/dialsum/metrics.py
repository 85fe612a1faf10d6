"""Score summaries the way the Korean dialogue-summarization competitions do.

ROUGE-1/2/L F1 on *morphemes* (Kiwi by default), each ×100; a row with several references scores
the mean over its references; the final score is the mean of the three metrics. We use the
`rouge-score` package for the n-gram and LCS arithmetic but never its default tokenizer: that one
keeps only `[a-z0-9]` and so turns every Korean text into an empty token list (ROUGE 0).

Also here: foreign-script detection (Han, kana, Cyrillic, ...) shared by the scorer and the
generation module's logits processor, and `evaluate_files` for scoring a predictions CSV.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from statistics import fmean
from typing import Any

from dialsum.config import DEFAULT_FORBIDDEN_SCRIPTS
from dialsum.errors import DialsumError

__all__ = [
    "ROUGE_TYPES",
    "SCRIPT_RANGES",
    "TOKENIZERS",
    "clear_token_cache",
    "evaluate_files",
    "foreign_script_chars",
    "foreign_script_pattern",
    "format_table",
    "get_kiwi",
    "has_foreign_script",
    "print_scores",
    "score",
    "score_rows",
    "score_with_rows",
    "tokenize_texts",
]

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")
TOKENIZERS = ("kiwi", "mecab", "whitespace")

# --------------------------------------------------------------------------------------------------
# Foreign scripts
# --------------------------------------------------------------------------------------------------

# Inclusive code-point ranges per script. Latin, digits, punctuation and Hangul (syllables, jamo,
# compatibility jamo) appear in none of them, so "Mr. Smith $5" or "#Person1#" is never foreign.
# Punctuation-only code points inside these blocks (katakana middle dot U+30FB, the double hyphen
# U+30A0, the baht sign U+0E3F) are left out on purpose.
SCRIPT_RANGES: dict[str, list[tuple[int, int]]] = {
    "Han": [
        (0x2E80, 0x2EFF),  # CJK radicals supplement
        (0x2F00, 0x2FDF),  # Kangxi radicals
        (0x3005, 0x3007),  # 々 〆 〇
        (0x3021, 0x3029),  # Hangzhou numerals
        (0x3038, 0x303B),
        (0x3400, 0x4DBF),  # CJK unified ideographs extension A
        (0x4E00, 0x9FFF),  # CJK unified ideographs
        (0xF900, 0xFAFF),  # CJK compatibility ideographs
        (0x20000, 0x2FA1F),  # extensions B-F, compatibility supplement
        (0x30000, 0x323AF),  # extensions G-H
    ],
    "Hiragana": [(0x3041, 0x309F), (0x1B001, 0x1B11F)],
    "Katakana": [
        (0x30A1, 0x30FA),
        (0x30FC, 0x30FF),  # ー ヽ ヾ ヿ
        (0x31F0, 0x31FF),  # phonetic extensions
        (0xFF66, 0xFF9F),  # halfwidth katakana
        (0x1B000, 0x1B000),
    ],
    "Cyrillic": [(0x0400, 0x052F), (0x1C80, 0x1C8F), (0x2DE0, 0x2DFF), (0xA640, 0xA69F)],
    "Thai": [(0x0E01, 0x0E3A), (0x0E40, 0x0E5B)],
    "Arabic": [(0x0600, 0x06FF), (0x0750, 0x077F), (0x0870, 0x08FF), (0xFB50, 0xFDFF), (0xFE70, 0xFEFF)],
    "Hebrew": [(0x0591, 0x05F4), (0xFB1D, 0xFB4F)],
    "Greek": [(0x0370, 0x03FF), (0x1F00, 0x1FFF)],
    "Devanagari": [(0x0900, 0x097F), (0xA8E0, 0xA8FF)],
}
_SCRIPT_NAMES = {name.lower(): name for name in SCRIPT_RANGES}


def _script_key(scripts: Iterable[str] | None) -> tuple[str, ...]:
    """Canonical, hashable script names (case-insensitive input); an unknown name is a user error."""
    names = DEFAULT_FORBIDDEN_SCRIPTS if scripts is None else ([scripts] if isinstance(scripts, str) else scripts)
    canonical = []
    for name in names:
        found = _SCRIPT_NAMES.get(str(name).strip().lower())
        if found is None:
            raise DialsumError(f"unknown script {name!r}; valid scripts: {', '.join(SCRIPT_RANGES)}")
        if found not in canonical:
            canonical.append(found)
    return tuple(canonical)


@functools.lru_cache(maxsize=64)
def _compiled(scripts: tuple[str, ...]) -> re.Pattern[str] | None:
    if not scripts:
        return None
    parts = [
        re.escape(chr(lo)) if lo == hi else f"{re.escape(chr(lo))}-{re.escape(chr(hi))}"
        for name in scripts
        for lo, hi in SCRIPT_RANGES[name]
    ]
    return re.compile("[" + "".join(parts) + "]")


def foreign_script_pattern(scripts: Iterable[str] | None = None) -> re.Pattern[str] | None:
    """A compiled character class matching any character of `scripts` (None: the defaults; empty: None).

    Cached per script set, so callers scanning a whole vocabulary can call it freely.
    """
    return _compiled(_script_key(scripts))


def has_foreign_script(text: str, scripts: Iterable[str] | None = None) -> bool:
    """True when `text` has at least one character of a forbidden script (default: DEFAULT_FORBIDDEN_SCRIPTS)."""
    pattern = _compiled(_script_key(scripts))
    return pattern is not None and pattern.search(text) is not None


def foreign_script_chars(text: str, scripts: Iterable[str] | None = None) -> set[str]:
    """The distinct forbidden-script characters in `text` (for reports: *which* leaked, not just whether)."""
    pattern = _compiled(_script_key(scripts))
    return set(pattern.findall(text)) if pattern is not None else set()


# --------------------------------------------------------------------------------------------------
# Tokenizers
# --------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def get_kiwi():
    """The process-wide Kiwi, loaded and warmed once: construction plus the first call cost ~3-4 s."""
    from kiwipiepy import Kiwi

    kiwi = Kiwi()
    kiwi.tokenize("안녕하세요.")  # the first call loads the language model lazily; pay for it here
    return kiwi


@functools.lru_cache(maxsize=1)
def _get_mecab():
    try:
        from mecab import MeCab
    except ImportError:
        raise DialsumError(
            "tokenizer 'mecab' needs python-mecab-ko, which is not installed: "
            "pip install 'dialsum[mecab]' (or use tokenizer 'kiwi')"
        ) from None
    return MeCab()


# Tokens already computed in this process, per (tokenizer, text). `dialsum run` scores the same
# texts twice (summary and per-row); the second pass then costs no morphological analysis.
_TOKEN_CACHE: dict[tuple[str, str], tuple[str, ...]] = {}
_TOKEN_CACHE_LIMIT = 200_000


def clear_token_cache() -> None:
    """Forget cached tokenizations (benchmarks use it to time real work)."""
    _TOKEN_CACHE.clear()


def _check_tokenizer(tokenizer: str) -> None:
    if tokenizer not in TOKENIZERS:
        raise DialsumError(f"unknown tokenizer {tokenizer!r}; valid tokenizers: {', '.join(TOKENIZERS)}")


def tokenize_texts(texts: Sequence[str], tokenizer: str = "kiwi") -> list[tuple[str, ...]]:
    """Tokens of each text, in order. Kiwi gets all uncached texts in one batched call (faster than one by one).

    Kiwi and MeCab tokens are morpheme forms without POS tags, as in the competition baseline.
    """
    _check_tokenizer(tokenizer)
    todo = list(dict.fromkeys(t for t in texts if (tokenizer, t) not in _TOKEN_CACHE))
    if todo:
        if len(_TOKEN_CACHE) + len(todo) > _TOKEN_CACHE_LIMIT:
            _TOKEN_CACHE.clear()
        if tokenizer == "kiwi":
            results = get_kiwi().tokenize(todo)  # yields token lists in input order
            computed = [tuple(token.form for token in tokens) for tokens in results]
        elif tokenizer == "mecab":
            mecab = _get_mecab()
            computed = [tuple(mecab.morphs(text)) for text in todo]
        else:
            computed = [tuple(text.split()) for text in todo]
        for text, tokens in zip(todo, computed, strict=True):
            _TOKEN_CACHE[(tokenizer, text)] = tokens
    return [_TOKEN_CACHE[(tokenizer, t)] for t in texts]


class _PretokenizedLookup:
    """The `tokenize(text)` object rouge-score expects, answering from tokens computed in one batch.

    Looking tokens up (rather than joining morphemes with spaces and splitting again) keeps Kiwi's
    multi-word proper nouns such as '데드 맨' as the single tokens Kiwi produced.
    """

    def __init__(self, tokens: dict[str, Sequence[str]]):
        self._tokens = tokens

    def tokenize(self, text: str) -> list[str]:
        return list(self._tokens[text])


# --------------------------------------------------------------------------------------------------
# Scoring
# --------------------------------------------------------------------------------------------------


def _normalise_references(predictions: Sequence[str], references: Sequence[Sequence[str] | str]) -> list[list[str]]:
    if len(predictions) != len(references):
        raise DialsumError(f"{len(predictions)} predictions but {len(references)} reference rows")
    rows = []
    for index, refs in enumerate(references):
        refs = [refs] if isinstance(refs, str) else list(refs)
        kept = [r for r in refs if r is not None and r.strip()]
        if not kept:
            raise DialsumError(f"row {index + 1}: no non-empty reference summary to score against")
        rows.append(kept)
    return rows


def score_rows(
    predictions: Sequence[str],
    references: Sequence[Sequence[str] | str],
    tokenizer: str = "kiwi",
    forbidden_scripts: Iterable[str] | None = None,
) -> list[dict[str, Any]]:
    """Per-row scores: rouge1/rouge2/rougeL (F1 ×100, mean over the row's references), their mean as
    `final_score`, `foreign` (bool) and `foreign_chars` (the offending characters, as one string).

    An empty or whitespace-only prediction scores 0. Empty references are ignored; a row without any
    reference raises DialsumError.
    """
    from rouge_score import rouge_scorer

    predictions = ["" if p is None else str(p) for p in predictions]
    refs = _normalise_references(predictions, references)
    scripts = _script_key(forbidden_scripts)

    texts = list(dict.fromkeys([*predictions, *(r for row in refs for r in row)]))
    tokens = dict(zip(texts, tokenize_texts(texts, tokenizer), strict=True))
    scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), tokenizer=_PretokenizedLookup(tokens))

    rows = []
    for prediction, row_refs in zip(predictions, refs):
        if tokens[prediction]:
            per_ref = [scorer.score(ref, prediction) for ref in row_refs]  # score(target, prediction)
            values = {k: 100.0 * fmean(s[k].fmeasure for s in per_ref) for k in ROUGE_TYPES}
        else:  # nothing to match; rouge-score would give 0 too, but say so explicitly
            values = {k: 0.0 for k in ROUGE_TYPES}
        chars = foreign_script_chars(prediction, scripts)
        rows.append(
            {
                **values,
                "final_score": fmean(values.values()),
                "foreign": bool(chars),
                "foreign_chars": "".join(sorted(chars)),
            }
        )
    return rows


def score(
    predictions: Sequence[str],
    references: Sequence[Sequence[str] | str],
    tokenizer: str = "kiwi",
    forbidden_scripts: Iterable[str] | None = None,
) -> dict[str, Any]:
    """Corpus scores: mean over rows of each ROUGE F1 ×100, `rouge_sum`, `final_score` (mean of the three).

    Also `foreign_rate` (percent of predictions with a forbidden-script character, 0-100),
    `empty_predictions` (count), `pred_len`/`ref_len` (mean characters; ref_len averages each row's
    references first), `n` (rows) and `tokenizer`.
    """
    return score_with_rows(predictions, references, tokenizer, forbidden_scripts)[0]


def score_with_rows(
    predictions: Sequence[str],
    references: Sequence[Sequence[str] | str],
    tokenizer: str = "kiwi",
    forbidden_scripts: Iterable[str] | None = None,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """`score` and `score_rows` from one pass: the corpus summary and the per-row scores it averages."""
    predictions = ["" if p is None else str(p) for p in predictions]
    rows = score_rows(predictions, references, tokenizer, forbidden_scripts)
    refs = _normalise_references(predictions, references)
    return _summarise(rows, predictions, refs, tokenizer), rows


def _summarise(rows: list[dict], predictions: list[str], refs: list[list[str]], tokenizer: str) -> dict[str, Any]:
    n = len(rows)
    if n == 0:
        raise DialsumError("nothing to score: no predictions")
    result: dict[str, Any] = {k: fmean(row[k] for row in rows) for k in ROUGE_TYPES}
    result["rouge_sum"] = sum(result[k] for k in ROUGE_TYPES)
    result["final_score"] = result["rouge_sum"] / len(ROUGE_TYPES)
    result["foreign_rate"] = 100.0 * sum(row["foreign"] for row in rows) / n
    result["empty_predictions"] = sum(1 for p in predictions if not p.strip())
    result["pred_len"] = fmean(len(p) for p in predictions)
    result["ref_len"] = fmean(fmean(len(r) for r in row) for row in refs)
    result["n"] = n
    result["tokenizer"] = tokenizer
    return result


# --------------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------------

_EXTRA_REFERENCE = re.compile(r"^summary(\d+)$")


def _id_list(ids: Iterable[str], limit: int = 5) -> str:
    ids = list(ids)
    shown = ", ".join(ids[:limit])
    return shown + (f", ... ({len(ids)} in all)" if len(ids) > limit else f" ({len(ids)})")


def _reference_rows(path: Path) -> dict[str, list[str]]:
    """fname → reference summaries, from a competition CSV (`summary`, `summary1..N`) or a DCS JSON/JSONL."""
    from dialsum.data import load_dialogues, read_table

    if path.suffix.lower() in (".json", ".jsonl"):
        return {d.id: list(d.references) for d in load_dialogues(path)}
    table = read_table(path, required=["fname"])
    numbered = sorted((int(m.group(1)), name) for name in table[0] if (m := _EXTRA_REFERENCE.match(name)))
    columns = (["summary"] if "summary" in table[0] else []) + [name for _, name in numbered]
    if not columns:
        raise DialsumError(f"{path}: no reference column (expected 'summary' or 'summary1', 'summary2', ...); is this a test file?")
    references: dict[str, list[str]] = {}
    for number, row in enumerate(table, start=1):
        fname = row["fname"].strip()
        if fname in references:
            raise DialsumError(f"{path}: row {number}: duplicate fname {fname!r}")
        references[fname] = [row[c].strip() for c in columns if row[c].strip()]
    return references


def evaluate_files(
    predictions_csv: str | Path,
    references_csv: str | Path,
    tokenizer: str = "kiwi",
    forbidden_scripts: Iterable[str] | None = None,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Score a `fname,summary` predictions CSV against a reference file, joined on `fname`.

    Every reference id needs exactly one prediction and vice versa; a mismatch raises DialsumError
    naming the ids. An empty prediction cell scores 0 and is counted in `empty_predictions`.
    Returns (summary as from `score`, plus the two paths; per-row dicts in reference order with
    fname, prediction, reference (the first) and the `score_rows` fields).
    """
    from dialsum.data import read_table

    predictions_csv, references_csv = Path(predictions_csv), Path(references_csv)
    _check_tokenizer(tokenizer)
    _script_key(forbidden_scripts)  # fail on a bad script name before the slow part
    predicted: dict[str, str] = {}
    for number, row in enumerate(read_table(predictions_csv, required=["fname", "summary"]), start=1):
        fname = row["fname"].strip()
        if fname in predicted:
            raise DialsumError(f"{predictions_csv}: row {number}: duplicate fname {fname!r}")
        predicted[fname] = row["summary"].strip()
    references = _reference_rows(references_csv)

    missing = [f for f in references if f not in predicted]
    extra = [f for f in predicted if f not in references]
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing predictions for {_id_list(missing)}")
        if extra:
            parts.append(f"predictions for ids not in the references: {_id_list(extra)}")
        raise DialsumError(f"{predictions_csv} vs {references_csv}: " + "; ".join(parts))
    unlabeled = [f for f, refs in references.items() if not refs]
    if unlabeled:
        raise DialsumError(f"{references_csv}: empty reference summary for {_id_list(unlabeled)}")

    ids = list(references)
    predictions = [predicted[f] for f in ids]
    refs = [references[f] for f in ids]
    summary, rows = score_with_rows(predictions, refs, tokenizer, forbidden_scripts)
    summary["predictions"] = str(predictions_csv)
    summary["references"] = str(references_csv)
    per_row = [
        {"fname": f, "prediction": p, "reference": r[0], **row} for f, p, r, row in zip(ids, predictions, refs, rows)
    ]
    return summary, per_row


# --------------------------------------------------------------------------------------------------
# Display
# --------------------------------------------------------------------------------------------------


def format_table(result: dict[str, Any], title: str | None = None):
    """A rich Table of a `score` result: the three ROUGE F1s, their sum and mean, then the diagnostics."""
    from rich.table import Table

    table = Table(title=title, show_header=True, header_style="bold")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, label in (("rouge1", "ROUGE-1 F1"), ("rouge2", "ROUGE-2 F1"), ("rougeL", "ROUGE-L F1")):
        table.add_row(label, f"{result[key]:.2f}")
    table.add_row("ROUGE sum", f"{result['rouge_sum']:.2f}")
    table.add_row("[bold]final score (mean)[/bold]", f"[bold]{result['final_score']:.2f}[/bold]")
    table.add_section()
    table.add_row("foreign-script predictions", f"{result.get('foreign_rate', 0.0):.1f}%")
    if "empty_predictions" in result:
        table.add_row("empty predictions", str(result["empty_predictions"]))
    if "pred_len" in result:
        table.add_row("mean length (chars) pred / ref", f"{result['pred_len']:.1f} / {result['ref_len']:.1f}")
    table.add_row("rows", str(result.get("n", "")))
    if "tokenizer" in result:
        table.add_row("tokenizer", str(result["tokenizer"]))
    return table


def print_scores(result: dict[str, Any], title: str | None = None, console=None) -> None:
    """Print `format_table(result)` to `console` (default: a new stdout Console)."""
    from rich.console import Console

    (console or Console()).print(format_table(result, title))
