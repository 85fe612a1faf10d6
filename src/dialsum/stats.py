"""Dataset statistics that do not depend on hardware: length percentiles and padding waste."""

from __future__ import annotations

import random

import numpy as np


def length_percentiles(lengths: list[int]) -> dict[str, float]:
    values = np.asarray(lengths)
    return {f"p{p}": float(np.percentile(values, p)) for p in (50, 90, 95, 99)} | {"max": float(values.max())}


def padded_waste(lengths: list[int], batch_size: int, seed: int = 0) -> float:
    """Share of computed positions that are padding when shuffled examples are padded per batch (dynamic padding)."""
    order = list(lengths)
    random.Random(seed).shuffle(order)
    real = computed = 0
    for start in range(0, len(order), batch_size):
        batch = order[start : start + batch_size]
        real += sum(batch)
        computed += max(batch) * len(batch)
    return 1 - real / computed if computed else 0.0


def pack_lengths(lengths: list[int], max_length: int) -> list[list[int]]:
    """Best-fit decreasing, as TRL's `bfd` strategy packs: each sample goes into the fullest row it fits."""
    rows: list[list[int]] = []
    space: list[int] = []
    for length in sorted(lengths, reverse=True):
        length = min(length, max_length)
        best = min((i for i, free in enumerate(space) if free >= length), key=lambda i: space[i], default=None)
        if best is None:
            rows.append([length])
            space.append(max_length - length)
        else:
            rows[best].append(length)
            space[best] -= length
    return rows


def packed_waste(lengths: list[int], max_length: int, padding_free: bool = True) -> float:
    """Padding share with packing: zero when packs are flattened padding-free (TRL's bfd collator);
    with fixed `max_length` rows it is the unfilled tail of each row."""
    if padding_free or not lengths:
        return 0.0
    rows = pack_lengths(lengths, max_length)
    return 1 - sum(map(sum, rows)) / (len(rows) * max_length)
