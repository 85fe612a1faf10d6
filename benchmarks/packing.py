"""Padded vs packed training: analytic FLOPs per real token on the real 3B architectures, and CPU throughput.

Part 1, analytic (no model, no GPU): for each real architecture and the real dev lengths under its real
tokenizer, training FLOPs per real (non-padding) token of one epoch in three layouts, each micro-batch holding
`--batch` examples (the recipe):

- padded: every example its own row, padded to the longest of the micro-batch, dense attention (sdpa) with a mask;
- packed rows (sdpa/eager): best-fit-decreasing rows of max_length stay batch rows, dense per-row attention;
- packed varlen (flash-attention): the flattened rows, varlen kernels compute each example's causal triangle;
- flat on sdpa, for reference: TRL's flattened row on a dense kernel (dialsum's previous layout), one (B·L)² block.

    FLOPs per real token = 3 · (2 · N_block · T_computed + 2 · d · V · T_trained + 4 · layers · heads · d_head · P)
                           / T_real

N_block = matmul parameters of the decoder layers (q, k, v, o, gate, up, down), T_computed = positions the model
computes (padding included), T_trained = positions with a label (TRL's fused LM head projects only those),
P = query-key pairs the attention kernel computes: every pair of each L × L block on a dense kernel (masked-out
pairs included), n(n+1)/2 per example on a varlen kernel; 3 = forward + backward (full fine-tuning).

Part 2, measured side by side in one run: real-token throughput (tokens that are not padding, per second) and
padding waste of the tiny Llama on the CPU, padded vs packed rows (dialsum's layout on sdpa) vs TRL's flattened
row (the previous layout), with the same number of examples per step. Medians over repeats; the first step of each
run is excluded (warm-up).

    python benchmarks/packing.py [--steps 8 | --epoch] [--repeats 3] [--max-length 1024] [--batch 8] [--attn sdpa]
                                 [--flattened] [--no-cpu]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

from common import ROOT, real_dev_or_sample

MODELS = ROOT.parent / "shared" / "models"
# Qwen2.5-3B-Instruct: figures from its model card (../shared/models/README.md); it shares the 1.5B tokenizer.
QWEN25_3B = {
    "model_type": "qwen2",
    "vocab_size": 151_936,
    "hidden_size": 2048,
    "num_hidden_layers": 36,
    "num_attention_heads": 16,
    "num_key_value_heads": 2,
    "intermediate_size": 11_008,
    "tie_word_embeddings": True,
}


def analytic(args) -> None:
    from transformers import AutoTokenizer

    from dialsum.config import config_from_dict
    from dialsum.data import load_dialogues
    from dialsum.encode import encode_dialogues, ensure_pad_token
    from dialsum.packing import plan_epoch
    from dialsum.plan import Architecture, forward_flops

    data = real_dev_or_sample()
    dialogues = load_dialogues(data)
    qwen_15b = Architecture.from_config(json.loads((MODELS / "qwen2.5-1.5b-instruct" / "config.json").read_text()))
    print(
        f"check: Qwen2.5-1.5B config.json gives {qwen_15b.params / 1e9:.3f} B parameters (published 1.54 B; "
        "qkv biases left out)"
    )
    models = [
        (
            "Bllossom Llama-3.2-3B",
            "llama-3.2-korean-bllossom-3b",
            json.loads((MODELS / "llama-3.2-korean-bllossom-3b" / "config.json").read_text()),
        ),
        ("Qwen2.5-3B", "qwen2.5-1.5b-instruct", QWEN25_3B),
    ]
    print(
        f"data: {data} ({len(dialogues)} dialogues); max_length {args.max_length}; {args.batch} examples per "
        "micro-batch in every layout"
    )
    print()
    print(f"{'model':24}{'params':>9}{'layout':>16}{'waste':>8}{'GFLOP/real tok':>16}{'vs padded':>11}")
    for label, tokenizer_dir, arch_config in models:
        arch = Architecture.from_config(arch_config)
        config = config_from_dict(
            {"model": {"name_or_path": str(MODELS / tokenizer_dir)}, "training": {"max_length": args.max_length}}
        )
        tokenizer = AutoTokenizer.from_pretrained(str(MODELS / tokenizer_dir))
        ensure_pad_token(tokenizer)
        examples, _ = encode_dialogues(tokenizer, dialogues, config)
        lengths = [len(e["input_ids"]) for e in examples]
        trained = sum(sum(1 for label in e["labels"] if label != -100) for e in examples)
        layouts = {
            "padded": plan_epoch(lengths, args.max_length, args.batch, 1, packing=False),
            "packed rows": plan_epoch(lengths, args.max_length, args.batch, 1, layout="rows"),
            "packed varlen": plan_epoch(lengths, args.max_length, args.batch, 1, layout="flat"),
            "flat on sdpa": plan_epoch(lengths, args.max_length, args.batch, 1, layout="flat-dense"),
        }
        base = None
        for name, epoch in layouts.items():
            per_token = 3 * forward_flops(arch, epoch, trained) / epoch.real_tokens
            base = base or per_token
            print(
                f"{label:24}{arch.params / 1e9:8.2f}B{name:>16}{epoch.padding_waste:8.1%}{per_token / 1e9:16.2f}"
                f"{per_token / base:10.2f}x"
            )
            label = ""


def cpu(args) -> None:
    import dialsum.monitor as train_module  # where the trainer picks its packing layout
    from dialsum.config import config_from_dict
    from dialsum.rundir import read_jsonl
    from dialsum.train import train

    data = real_dev_or_sample()
    base = {
        "model": {"name_or_path": args.model, "attn_implementation": args.attn},
        "data": {"train": str(data)},
        "training": {
            "max_length": args.max_length,
            "max_steps": -1 if args.epoch else args.steps,
            "num_train_epochs": 1,
            "gradient_accumulation_steps": 1,
            "per_device_train_batch_size": args.batch,
            "gradient_checkpointing": False,
            "learning_rate": 1e-4,
            "warmup_ratio": 0.0,
            "save_steps": 10_000,
        },
        "logging": {"steps": 1},
    }
    real_layout = train_module.packing_layout

    def throughput(variant: str, out: Path) -> tuple[float, float, float]:
        train_module.packing_layout = (lambda attn: "flat") if variant == "flattened" else real_layout
        run = train(config_from_dict(base, [f"training.packing={str(variant != 'padded').lower()}"]), output_dir=out)
        rows = [r for r in read_jsonl(run / "metrics.jsonl")[0] if "loss" in r][1:]
        real = sum(r["real_tokens"] for r in rows)
        examples = sum(r["examples"] for r in rows) / len(rows)
        return real / sum(r["train_seconds"] for r in rows), real / sum(r["processed_tokens"] for r in rows), examples

    variants = ("padded", "packed rows") + (("flattened",) if args.flattened else ())
    tps = {v: [] for v in variants}
    fraction, examples = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):
            for v in variants:
                speed, fraction[v], examples[v] = throughput(v, Path(tmp) / f"{v.replace(' ', '_')}{repeat}")
                tps[v].append(speed)
    train_module.packing_layout = real_layout
    median = {v: statistics.median(tps[v]) for v in variants}
    print()
    print(f"CPU, {args.model}, attn={args.attn}, {args.batch} examples per step, max_length {args.max_length}")
    print(f"{'':26}" + "".join(f"{v:>14}" for v in variants))
    print(f"{'real tokens/s (median)':26}" + "".join(f"{median[v]:14.0f}" for v in variants))
    print(f"{'vs padded':26}" + "".join(f"{median[v] / median['padded']:13.2f}x" for v in variants))
    print(f"{'padding waste (measured)':26}" + "".join(f"{1 - fraction[v]:14.1%}" for v in variants))
    print(f"{'examples per step (mean)':26}" + "".join(f"{examples[v]:14.1f}" for v in variants))
    length = "1 epoch" if args.epoch else f"steps={args.steps}"
    print(
        f"device: cpu, {os.cpu_count()} cores; repeats={args.repeats}, {length}; all runs: "
        + ", ".join(f"{v} {[round(t) for t in tps[v]]}" for v in variants)
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-length", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=8, help="examples per micro-batch")
    parser.add_argument("--attn", default="sdpa")
    parser.add_argument("--model", default="tiny:llama")
    parser.add_argument("--epoch", action="store_true", help="train one full epoch per run instead of --steps")
    parser.add_argument("--flattened", action="store_true", help="also time TRL's flattened row on --attn")
    parser.add_argument("--no-cpu", action="store_true", help="only the analytic part")
    args = parser.parse_args()
    analytic(args)
    if not args.no_cpu:
        cpu(args)


if __name__ == "__main__":
    sys.exit(main())
