"""Batched vs one-by-one generation throughput with `dialsum.generate.generate_summaries`.

Prints dialogues per second for batch size 1 and the batched size(s), medians over repeats, and the
ratio to one-by-one. The tiny random model never emits EOS under greedy decoding, so every sequence
runs to --max-new-tokens in both modes (a fair comparison; real models stop earlier, and batching
then also waits for the longest sequence of a batch).

    python benchmarks/generate.py [--n 32] [--batch 8 16] [--max-new-tokens 32] [--repeats 3] [--model tiny:llama]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

from common import real_dev_or_sample


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=32, help="dialogues to summarise")
    parser.add_argument("--batch", type=int, nargs="+", default=[8, 16])
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--model", default="tiny:llama")
    args = parser.parse_args()

    import torch

    from dialsum.config import config_from_dict
    from dialsum.data import load_dialogues
    from dialsum.generate import generate_summaries
    from dialsum.models import load_for_inference, resolve_model_path

    data = real_dev_or_sample()
    dialogues = load_dialogues(data)[: args.n]
    path = resolve_model_path(args.model)
    config = config_from_dict({"model": {"name_or_path": path}, "generation": {"max_new_tokens": args.max_new_tokens}})
    model, tokenizer, config = load_for_inference(path, config)
    device = next(model.parameters()).device
    print(
        f"model {args.model} on {device} ({torch.get_num_threads()} threads), {len(dialogues)} dialogues from "
        f"{data.name}, max_new_tokens={args.max_new_tokens}, greedy, suppression on",
        file=sys.stderr,
    )

    def run(batch_size: int) -> float:
        config.generation.batch_size = batch_size
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        generate_summaries(model, tokenizer, dialogues, config, progress=False)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    sizes = [1, *args.batch]
    run(max(sizes))  # warm-up
    times: dict[int, list[float]] = {size: [] for size in sizes}
    for _ in range(args.repeats):  # interleaved, so background load hits every setting alike
        for size in sizes:
            times[size].append(run(size))
    base = statistics.median(times[1])
    print(f"{'batch':>5}  {'median s':>9}  {'dialogues/s':>11}  {'vs batch 1':>10}")
    for size in sizes:
        median = statistics.median(times[size])
        print(f"{size:>5}  {median:>9.2f}  {len(dialogues) / median:>11.1f}  {base / median:>9.2f}x")


if __name__ == "__main__":
    main()
