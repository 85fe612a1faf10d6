"""Padded vs packed training on the real dev length distribution and the tiny Llama.

Prints, measured side by side in one run: real-token throughput (tokens that are not padding, per second)
and padding waste, padded vs packed, as ratios. Medians over repeats; the first step of each run is
excluded from throughput (warm-up).

    python benchmarks/packing.py [--steps 8] [--repeats 3] [--max-length 1024] [--batch 8] [--attn sdpa]

On a CPU packing pays for a dense block-diagonal mask over the flattened batch, so expect little or no
speed-up there; the throughput win needs a GPU with flash-attention varlen kernels. Padding waste does
not depend on the hardware.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

from common import real_dev_or_sample


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-length", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=8, help="padded examples per step")
    parser.add_argument("--attn", default="sdpa")
    parser.add_argument("--model", default="tiny:llama")
    args = parser.parse_args()

    from dialsum.config import config_from_dict
    from dialsum.data import load_dialogues
    from dialsum.encode import encode_dialogues, ensure_pad_token
    from dialsum.models import load_tokenizer
    from dialsum.stats import length_percentiles, packed_waste, padded_waste
    from dialsum.train import read_metrics, train

    data = real_dev_or_sample()
    base = {
        "model": {"name_or_path": args.model, "attn_implementation": args.attn},
        "data": {"train": str(data)},
        "training": {"max_length": args.max_length, "max_steps": args.steps, "gradient_accumulation_steps": 1,
                     "gradient_checkpointing": False, "learning_rate": 1e-4, "warmup_ratio": 0.0, "save_steps": 10_000},
        "logging": {"steps": 1},
    }
    config = config_from_dict(base)
    tokenizer = load_tokenizer(config.model.name_or_path, config)
    ensure_pad_token(tokenizer)
    examples, _ = encode_dialogues(tokenizer, load_dialogues(data), config)
    lengths = [len(e["input_ids"]) for e in examples]
    mean_length = statistics.mean(lengths)
    # Same real tokens per step either way: a packed row holds about max_length / mean_length examples.
    packed_rows = max(1, round(args.batch * mean_length / args.max_length))
    waste_padded = padded_waste(lengths, args.batch)
    waste_packed = packed_waste(lengths, args.max_length, padding_free=True)
    print(f"data: {data} ({len(lengths)} examples), token lengths {length_percentiles(lengths)}")
    print(f"padded: {args.batch} examples/step; packed: {packed_rows} row(s) of {args.max_length}/step; attn={args.attn}")

    def throughput(packing: bool, out: Path) -> tuple[float, float]:
        overrides = [f"training.packing={str(packing).lower()}",
                     f"training.per_device_train_batch_size={packed_rows if packing else args.batch}"]
        run = train(config_from_dict(base, overrides), output_dir=out)
        rows = [r for r in read_metrics(run / "metrics.jsonl") if "loss" in r][1:]
        real = sum(r["real_tokens"] for r in rows)
        return real / sum(r["train_seconds"] for r in rows), real / sum(r["processed_tokens"] for r in rows)

    padded, packed, fractions = [], [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):
            tps, fractions["padded"] = throughput(False, Path(tmp) / f"pad{repeat}")
            padded.append(tps)
            tps, fractions["packed"] = throughput(True, Path(tmp) / f"pack{repeat}")
            packed.append(tps)
    pad_tps, pack_tps = statistics.median(padded), statistics.median(packed)
    print()
    print(f"{'':24}{'padded':>12}{'packed':>12}{'ratio':>10}")
    print(f"{'real tokens/s (median)':24}{pad_tps:12.0f}{pack_tps:12.0f}{pack_tps / pad_tps:9.2f}x")
    print(f"{'padding waste (est.)':24}{waste_padded:12.1%}{waste_packed:12.1%}")
    print(f"{'padding waste (measured)':24}{1 - fractions['padded']:12.1%}{1 - fractions['packed']:12.1%}")
    print(f"device: {'cuda' if __import__('torch').cuda.is_available() else 'cpu'}, {os.cpu_count()} cores; repeats={args.repeats}, steps={args.steps}")


if __name__ == "__main__":
    sys.exit(main())
