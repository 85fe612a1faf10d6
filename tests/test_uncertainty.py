"""Bootstrap intervals, the paired difference of two runs, and the public/private halves."""

from __future__ import annotations

import random

import pytest

from dialsum.uncertainty import bootstrap_interval, halves, paired_bootstrap, split_halves


def _scores(n: int, seed: int = 1) -> list[float]:
    rng = random.Random(seed)
    return [max(0.0, min(100.0, rng.gauss(40, 15))) for _ in range(n)]


def test_the_interval_contains_the_estimate_narrows_with_more_rows_and_repeats_with_its_seed():
    small, large = _scores(50), _scores(2000)
    a, b = bootstrap_interval(small), bootstrap_interval(large)
    assert a["low"] < sum(small) / 50 < a["high"] and b["low"] < sum(large) / 2000 < b["high"]
    # the width of a mean's interval shrinks like 1/sqrt(n): 40x the rows, about 1/6.3 of the width
    ratio = (b["high"] - b["low"]) / (a["high"] - a["low"])
    assert 0.10 < ratio < 0.22
    assert bootstrap_interval(small) == a  # seeded
    assert bootstrap_interval(small, seed=7) != a
    # 95 %: the interval is about mean +- 1.96 standard errors (a 90 % or 99 % one would be off by 16-30 %)
    mean = sum(large) / len(large)
    se = (sum((x - mean) ** 2 for x in large) / (len(large) - 1) / len(large)) ** 0.5
    assert (b["high"] - b["low"]) / (2 * 1.96 * se) == pytest.approx(1.0, abs=0.07)
    assert bootstrap_interval([50.0]) is None


def test_a_run_against_itself_differs_by_exactly_zero():
    scores = _scores(499)
    same = paired_bootstrap(scores, scores)
    assert (same["difference"], same["low"], same["high"], same["better"], same["tied"]) == (0.0, 0.0, 0.0, 0.0, 1.0)


def test_a_paired_difference_sees_what_unpaired_noise_hides():
    """Run B is run A plus 0.5 on every dialogue: the paired bootstrap is sure B is better (every resample) although
    0.5 is far inside either run's own interval. Mutation caught: resampling the two runs independently."""
    a = _scores(499)
    b = [x + 0.5 for x in a]
    result = paired_bootstrap(a, b)
    assert result["difference"] == pytest.approx(0.5) and result["low"] == pytest.approx(0.5)
    assert result["better"] == 1.0
    own = bootstrap_interval(a)
    assert own["high"] - own["low"] > 2.0
    worse = paired_bootstrap(b, a)
    assert worse["better"] == 0.0 and worse["high"] == pytest.approx(-0.5)


def test_halves_are_stratified_by_topic_and_balanced():
    topics = ["여행"] * 7 + ["쇼핑"] * 5 + [None] * 3
    public = split_halves(topics, seed=3)
    assert abs(sum(public) - (len(topics) - sum(public))) <= 1
    for topic in ("여행", "쇼핑", None):
        members = [p for p, t in zip(public, topics) if t == topic]
        assert abs(sum(members) - (len(members) - sum(members))) <= 1  # within each topic, 50/50 (+-1)
    assert split_halves(topics, seed=3) == public and split_halves(topics, seed=4) != public
    values = [float(i) for i in range(len(topics))]
    split = halves(values, topics, seed=3)
    assert split["n_public"] == sum(public)
    assert split["public"] == pytest.approx(sum(v for v, p in zip(values, public) if p) / sum(public))
