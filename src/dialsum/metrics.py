"""Score summaries the way the Korean dialogue-summarization competitions do.

ROUGE-1/2/L F1 on *morphemes* (Kiwi by default), each ×100; a row with several references scores
the mean over its references; the final score is the mean of the three metrics. We use the
`rouge-score` package for the n-gram and LCS arithmetic but never its default tokenizer: that one
keeps only `[a-z0-9]` and so turns every Korean text into an empty token list (ROUGE 0).

Also here: the foreign-script rate of predictions (the script table itself lives in `scripts.py`, shared
with generation-time suppression). The competition recipes (`dialogsum`, `dcs`) build on this in
`schemes.py`, which also scores a predictions file against a reference file under any scheme and draws the
score tables.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from statistics import fmean
from typing import Any, get_args

from dialsum.config import ScorerTokenizer
from dialsum.errors import DialsumError
from dialsum.scripts import foreign_script_chars, script_key

__all__ = [
    "ROUGE_TYPES",
    "TOKENIZERS",
    "clear_token_cache",
    "get_kiwi",
    "score",
    "score_rows",
    "score_with_rows",
    "tokenize_texts",
]

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")
TOKENIZERS: tuple[str, ...] = get_args(ScorerTokenizer)

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


# Tokens already computed in this process, per (tokenizer, text). The same references are scored
# again and again (dev ROUGE at every evaluation during training, several runs or schemes over one
# dev set); each text then costs one morphological analysis per process.
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
    scripts = script_key(forbidden_scripts)

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


def _id_list(ids: Iterable[str], limit: int = 5) -> str:
    ids = list(ids)
    shown = ", ".join(ids[:limit])
    return shown + (f", ... ({len(ids)} in all)" if len(ids) > limit else f" ({len(ids)})")
