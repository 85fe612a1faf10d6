"""Benchmark `dialsum.metrics`: Kiwi load time, scoring time for the dev set, batched vs one-by-one tokenization.

Goal: once Kiwi is loaded, scoring the 499 dev rows takes < 2 s. References are the dev summaries;
predictions are the same summaries with their words shuffled (same tokens, broken order: a realistic
mix of ROUGE-1 near 100 and lower ROUGE-2/L). Run: `python benchmarks/score.py [--repeats 5]`.
"""

from __future__ import annotations

import argparse
import csv
import random
import statistics
import time
from pathlib import Path

from common import real_dev_or_sample
from dialsum import metrics


def load_summaries() -> tuple[Path, list[str]]:
    path = real_dev_or_sample("dev.csv")
    with path.open(encoding="utf-8", newline="") as handle:
        return path, [row["summary"] for row in csv.DictReader(handle) if row["summary"].strip()]


def shuffled(text: str, rng: random.Random) -> str:
    words = text.split()
    rng.shuffle(words)
    return " ".join(words)


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    path, references = load_summaries()
    rng = random.Random(0)
    predictions = [shuffled(r, rng) for r in references]
    texts = predictions + references
    print(f"data: {path} ({len(references)} rows, {len(texts)} texts)")

    load = timed(metrics.get_kiwi)  # construction + the first (lazy-loading) call
    print(f"Kiwi load (once per process):        {load:6.2f} s")
    kiwi = metrics.get_kiwi()

    def score_uncached():
        metrics.clear_token_cache()
        return metrics.score(predictions, references, tokenizer="kiwi")

    score_times = [timed(score_uncached) for _ in range(args.repeats)]
    result = score_uncached()

    def score_cached():
        return metrics.score(predictions, references, tokenizer="kiwi")

    cached_times = [timed(score_cached) for _ in range(args.repeats)]
    batched = [timed(lambda: [[t.form for t in toks] for toks in kiwi.tokenize(texts)]) for _ in range(args.repeats)]
    single = [timed(lambda: [[t.form for t in kiwi.tokenize(s)] for s in texts]) for _ in range(args.repeats)]

    med = statistics.median
    print(f"score(), {len(references)} rows, tokens not cached: {med(score_times):6.2f} s  (median of {args.repeats})")
    print(f"score(), tokens cached (2nd call):   {med(cached_times):6.2f} s")
    print(f"Kiwi tokenize, one batched call:     {med(batched):6.2f} s")
    print(f"Kiwi tokenize, one text per call:    {med(single):6.2f} s")
    print(f"one-by-one / batched:                {med(single) / med(batched):6.2f}x")
    print(
        f"scores (shuffled summaries vs summaries): R1 {result['rouge1']:.2f}  R2 {result['rouge2']:.2f}  "
        f"RL {result['rougeL']:.2f}  final {result['final_score']:.2f}"
    )


if __name__ == "__main__":
    main()
