"""How far to trust a dev score: bootstrap intervals over dialogues, the paired bootstrap of two runs' difference,
and the public/private shake-up a leaderboard's split of the test set would show.

Every scheme's corpus score is the mean of its per-row scores (ROUGE F1 is averaged over dialogues; the final score
is the mean of the metrics, so also the mean of each row's mean), so resampling dialogues and averaging their
per-row scores gives the distribution of the corpus score itself. Percentile intervals, seeded: the same rows and
seed give the same interval.

The DialogSum-Korean hidden test set (499 dialogues) is split about 250 public / 249 private by topic; on dev, a
seeded 50/50 split stratified by topic shows how far two such halves of one model's predictions fall apart.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["LEVEL", "RESAMPLES", "SEED", "bootstrap_interval", "halves", "paired_bootstrap", "split_halves"]

LEVEL = 0.95
RESAMPLES = 2000
SEED = 0
_CHUNK = 250  # resamples drawn at once: bounds memory on a test set of thousands of rows


def _means(values: np.ndarray, resamples: int, seed: int) -> np.ndarray:
    """The mean of `resamples` bootstrap resamples (rows drawn with replacement) of `values` (rows x columns)."""
    rng = np.random.default_rng(seed)
    n = values.shape[0]
    out = []
    for start in range(0, resamples, _CHUNK):
        size = min(_CHUNK, resamples - start)
        index = rng.integers(0, n, size=(size, n))
        out.append(values[index].mean(axis=1))
    return np.concatenate(out)


def _method(resamples: int, seed: int, level: float) -> str:
    return (
        f"{level:.0%} percentile bootstrap over dialogues ({resamples} resamples, seed {seed}) of the mean of "
        "per-row scores, which is the corpus score"
    )


def bootstrap_interval(
    values: Sequence[float], resamples: int = RESAMPLES, seed: int = SEED, level: float = LEVEL
) -> dict[str, Any] | None:
    """{"low", "high", "level", "resamples", "seed", "method"} for the mean of `values`; None below two rows."""
    array = np.asarray(values, dtype=float)
    if array.size < 2:
        return None
    means = _means(array[:, None], resamples, seed)[:, 0]
    tail = (1 - level) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    mean = float(array.mean())
    return {
        "low": min(float(low), mean),  # float rounding must not leave the point estimate outside
        "high": max(float(high), mean),
        "level": level,
        "resamples": resamples,
        "seed": seed,
        "method": _method(resamples, seed, level),
    }


def paired_bootstrap(
    baseline: Sequence[float],
    other: Sequence[float],
    resamples: int = RESAMPLES,
    seed: int = SEED,
    level: float = LEVEL,
) -> dict[str, Any]:
    """The difference `other - baseline` of two runs' mean scores on the same rows, resampled in pairs (one draw of
    dialogues for both): {"difference", "low", "high", "better" (share of resamples where `other` is higher),
    "tied" (share where equal), ...}. A run against itself is exactly 0 [0, 0], better 0, tied 1."""
    a, b = np.asarray(baseline, dtype=float), np.asarray(other, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"paired bootstrap needs the same rows: {a.size} vs {b.size}")
    difference = b - a
    means = _means(difference[:, None], resamples, seed)[:, 0] if a.size else np.zeros(1)
    tail = (1 - level) / 2
    low, high = np.quantile(means, [tail, 1 - tail]) if a.size > 1 else (float(difference.sum()),) * 2
    return {
        "difference": float(difference.mean()) if a.size else 0.0,
        "low": float(low),
        "high": float(high),
        "better": float(np.mean(means > 0)),
        "tied": float(np.mean(means == 0)),
        "level": level,
        "resamples": resamples,
        "seed": seed,
        "n": int(a.size),
        "method": f"paired {_method(resamples, seed, level)}",
    }


def split_halves(topics: Sequence[str | None], seed: int = SEED) -> list[bool]:
    """True for the rows of the 'public' half: 50/50 within each topic (seeded; a topic of odd size gives its extra
    row to the half that is behind), rows without a topic as one more group."""
    groups: dict[str | None, list[int]] = defaultdict(list)
    for index, topic in enumerate(topics):
        groups[(topic or "").strip() or None].append(index)
    rng = random.Random(seed)
    public = [False] * len(topics)
    balance = 0  # public minus private so far
    for key in sorted(groups, key=lambda k: (k is None, k or "")):
        members = groups[key]
        rng.shuffle(members)
        half = len(members) // 2
        extra = len(members) % 2
        take = half + (extra if balance <= 0 else 0)
        for index in members[:take]:
            public[index] = True
        balance += take - (len(members) - take)
    return public


def halves(values: Sequence[float], topics: Sequence[str | None], seed: int = SEED) -> dict[str, Any] | None:
    """The score of each half of a topic-stratified 50/50 split: the public/private shake-up to expect."""
    if len(values) < 2:
        return None
    public = split_halves(topics, seed)
    first = [v for v, p in zip(values, public) if p]
    second = [v for v, p in zip(values, public) if not p]
    with_topic = sum(1 for t in topics if (t or "").strip())
    return {
        "public": float(np.mean(first)),
        "private": float(np.mean(second)),
        "difference": float(np.mean(first) - np.mean(second)),
        "n_public": len(first),
        "n_private": len(second),
        "seed": seed,
        "method": (
            f"dev split 50/50 stratified by topic ({with_topic} of {len(values)} rows have one; the rest split at "
            f"random), seed {seed}, as the leaderboard splits its test set into public and private"
        ),
    }
