"""Is the output degenerate? A repetition and tag-spam figure beside every dev score.

Set-based and clipped ROUGE both reward a prediction that repeats the references' most frequent pieces: the demo's
tiny model writes `#Person1#은#은#은 …`, which scores above the first-utterance baseline under kiwi and dialogsum.
Three figures per text, each shown against the references':

- `stutter`: the share of the non-space characters inside a piece of 1-6 characters said three or more times in a
  row (`#은#은#은`, `수도 수도 수도`, `에에에`). DialogSum-Korean and Korean_DCS dev references: at most 0.05,
  first utterances at most 0.15; the demo's tiny model 0.27 to 0.49.
- `stray_tags`: '#' characters outside a speaker tag such as `#Person1#` (`#은#`): references 0 (one 2024 dev
  row has 2), tag spam 5 and more.
- `repeated`: the share of a text's character 4-grams (whitespace dropped) seen earlier in it: references about
  0.1 (at most 0.41), a loop nearly 1.

A row is degenerate when one figure passes its limit (no dev reference of the three competitions' does); the
predictions are degenerate, and their score is not to be trusted, when at least `SHARE_LIMIT` of the rows are.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from statistics import fmean
from typing import Any

__all__ = [
    "SHARE_LIMIT",
    "degeneracy",
    "describe_degeneracy",
    "is_degenerate",
    "repeated",
    "stray_tags",
    "stutter",
]

NGRAM = 4
STUTTER_LIMIT = 0.2
STRAY_LIMIT = 3
REPEAT_LIMIT = 0.6
SHARE_LIMIT = 0.2  # the predictions are degenerate when a fifth of the rows are

_STUTTER = re.compile(r"(\S{1,6}?)(?:\s*\1){2,}")
_TAG = re.compile(r"#[A-Za-z]+\d*#")


def _chars(text: str) -> str:
    return "".join(text.split())


def stutter(text: str) -> float:
    """The share of the non-space characters in runs of one piece (1-6 characters, a letter or digit among them)
    three or more times in a row."""
    total = len(_chars(text))
    if not total:
        return 0.0
    runs = (m for m in _STUTTER.finditer(text) if re.search(r"\w", m.group(1)))  # '...' is punctuation, not a loop
    return sum(len(_chars(m.group(0))) for m in runs) / total


def stray_tags(text: str) -> int:
    """'#' characters that are not part of a speaker tag (#Person1#, #PhoneNumber#)."""
    return text.count("#") - 2 * len(_TAG.findall(text))


def repeated(text: str, n: int = NGRAM) -> float:
    """The share of the character n-grams of `text` (whitespace dropped) seen earlier in it; 0 for a short text."""
    chars = _chars(text)
    grams = [chars[i : i + n] for i in range(len(chars) - n + 1)]
    return 1.0 - len(set(grams)) / len(grams) if grams else 0.0


def is_degenerate(text: str) -> bool:
    return stutter(text) >= STUTTER_LIMIT or stray_tags(text) >= STRAY_LIMIT or repeated(text) >= REPEAT_LIMIT


def _figures(text: str) -> dict[str, Any]:
    return {"stutter": stutter(text), "stray_tags": stray_tags(text), "repeated": repeated(text)}


def degeneracy(
    predictions: Sequence[str], references: Sequence[Sequence[str]]
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(dev_scores.json's `degeneracy`: each figure's mean for predictions and references, the degenerate rows and
    the verdict; per row {"degenerate": bool})."""
    predicted = [_figures(p) for p in predictions]
    refs = [_figures(r) for row in references for r in row]
    flags = [{"degenerate": is_degenerate(p)} for p in predictions]
    n = len(flags)
    share = sum(f["degenerate"] for f in flags) / n if n else 0.0
    summary: dict[str, Any] = {}
    for key in ("stutter", "stray_tags", "repeated"):
        summary[key] = fmean(f[key] for f in predicted) if predicted else 0.0
        summary[f"{key}_references"] = fmean(f[key] for f in refs) if refs else 0.0
    summary.update(
        degenerate_rows=sum(f["degenerate"] for f in flags),
        degenerate_share=share,
        degenerate=share >= SHARE_LIMIT,
        method=(
            f"a row is degenerate when {STUTTER_LIMIT:.0%} of its characters stutter (a piece three times in a row), "
            f"{STRAY_LIMIT} '#' stand outside speaker tags, or {REPEAT_LIMIT:.0%} of its character {NGRAM}-grams "
            f"repeat; the predictions are when {SHARE_LIMIT:.0%} of the rows are (dialsum.degeneracy)"
        ),
    )
    return summary, flags


def describe_degeneracy(result: dict[str, Any]) -> str | None:
    """One line: each figure against the references', the degenerate rows, and the verdict when degenerate."""
    d = result.get("degeneracy")
    if not isinstance(d, dict):
        return None
    text = (
        f"stutter {d['stutter']:.2f} (references {d['stutter_references']:.2f}), stray '#' {d['stray_tags']:.1f} "
        f"({d['stray_tags_references']:.1f}), repeated 4-grams {d['repeated']:.2f} ({d['repeated_references']:.2f}); "
        f"{d['degenerate_rows']} of {result.get('n', '?')} rows degenerate"
    )
    if d.get("degenerate"):
        text += ": DEGENERATE predictions (repetition / tag spam), the score is not to be trusted"
    return text
