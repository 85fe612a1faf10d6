"""The arithmetic behind two schemes, written out: the `rouge` 1.0.1 package's F (DialogSum-Korean's organizers
score with it; its sentence handling and LCS reproduced so no abandoned package is a dependency), and BERTScore F1
for Korean_DCS (the model loaded once per process). schemes.py says which recipe uses which."""

from __future__ import annotations

import functools
from collections.abc import Sequence

from dialsum.errors import DialsumError

# --------------------------------------------------------------------------------------------------
# The `rouge` 1.0.1 arithmetic (DialogSum-Korean), written out
# --------------------------------------------------------------------------------------------------


def _sentences(tokens: Sequence[str]) -> list[list[str]]:
    """Morphemes joined by spaces, split on '.', each piece whitespace-normalised, empty pieces dropped,
    words split on ' ' (a piece that was only spaces becomes the word ''): exactly what `rouge` does."""
    pieces = [" ".join(piece.split()) for piece in " ".join(tokens).split(".") if len(piece) > 0]
    return [piece.split(" ") for piece in pieces]


def _f(overlap: int, hyp: int, ref: int) -> float:
    precision = overlap / hyp if hyp else 0.0
    recall = overlap / ref if ref else 0.0
    return 2.0 * ((precision * recall) / (precision + recall + 1e-8))


def _ngram_set(words: list[str], n: int) -> set[tuple[str, ...]]:
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


def _lcs_words(x: list[str], y: list[str]) -> list[str]:
    """One longest common subsequence of x (reference) and y (hypothesis), with `rouge`'s tie-break:
    walking back, step in x only when that keeps a strictly longer LCS, else step in y."""
    n, m = len(x), len(y)
    table = [[0] * (m + 1) for _ in range(n + 1)]
    for i in range(1, n + 1):
        row, above, xi = table[i], table[i - 1], x[i - 1]
        for j in range(1, m + 1):
            row[j] = above[j - 1] + 1 if xi == y[j - 1] else max(above[j], row[j - 1])
    words: list[str] = []
    i, j = n, m
    while i > 0 and j > 0:
        if x[i - 1] == y[j - 1]:
            words.append(x[i - 1])
            i, j = i - 1, j - 1
        elif table[i - 1][j] > table[i][j - 1]:
            i -= 1
        else:
            j -= 1
    return words


def _rouge_101(hyp: list[list[str]], ref: list[list[str]]) -> dict[str, float]:
    """rouge-1, rouge-2 and summary-level rouge-l F of one hypothesis/reference pair (sentences of words)."""
    hyp_words = [w for s in hyp for w in s]
    ref_words = [w for s in ref for w in s]
    scores = {}
    for key, n in (("rouge1", 1), ("rouge2", 2)):
        h, r = _ngram_set(hyp_words, n), _ngram_set(ref_words, n)
        scores[key] = _f(len(h & r), len(h), len(r))
    union: set[str] = set()
    for ref_sentence in ref:
        for hyp_sentence in hyp:
            union.update(_lcs_words(ref_sentence, hyp_sentence))
    scores["rougeL"] = _f(len(union), len(set(hyp_words)), len(set(ref_words)))
    return scores


# --------------------------------------------------------------------------------------------------
# Model-based metrics (DCS)
# --------------------------------------------------------------------------------------------------


DEFAULT_BERTSCORE_MODEL = "bert-base-multilingual-cased"  # the official Korean_DCS scorer's


@functools.lru_cache(maxsize=2)
def _bertscorer(model: str, num_layers: int | None):
    from bert_score import BERTScorer
    from bert_score.utils import model2layers

    if num_layers is None and model not in model2layers:
        raise DialsumError(
            f"BERTScore model {model!r} is not one bert-score knows the layer of: set evaluation.bertscore_layers "
            f"(bert-base-multilingual-cased uses {model2layers[DEFAULT_BERTSCORE_MODEL]})"
        )
    return BERTScorer(model_type=model, num_layers=num_layers)


def bertscore_f1(
    predictions: list[str], references: list[str], model: str = DEFAULT_BERTSCORE_MODEL, num_layers: int | None = None
) -> tuple[list[float] | None, str | None]:
    """BERTScore F1 ×100 per row, or (None, a one-line note naming what could not be loaded)."""
    try:
        import bert_score  # noqa: F401
    except ImportError:
        return None, "BERTScore: not computed: bert-score is not installed (pip install 'dialsum[dcs]')"
    try:
        scorer = _bertscorer(model, num_layers)
    except DialsumError:
        raise
    except (OSError, ValueError) as error:  # offline, not in the HF cache, a path without a model, a bad repo id
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        return None, f"BERTScore: not computed: could not load {model!r} ({first})"
    _, _, f1 = scorer.score(predictions, references, verbose=False)
    return [100.0 * float(v) for v in f1], None
