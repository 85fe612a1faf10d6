"""Training steps of a real-size architecture on a GPU: tokens/s, MFU, and peak memory against `dialsum plan`.

Llama-3.2-3B's config (random weights, no download), trained the way dialsum trains it: packed rows (position_ids
restart per sample, no attention mask; rows of --max-length on sdpa/eager, one flattened row on flash-attention),
TRL's fused LM head (the logits are never built, as in SFTTrainer), AdamW, and dialsum's precision policy
(`--precision policy`: fp32 master weights and AdamW state under bf16 autocast, what model.dtype=auto does for full
fine-tuning; `--precision bf16`: bf16 weights and state, model.dtype=bfloat16). `--checkpointing` recomputes
activations (non-reentrant), as the presets do.

The measured peak is divided by `dialsum plan`'s estimate for the same batch (rows x length), precision, attention
kernel and checkpointing (`plan.memory_estimate`, full fine-tuning); MFU is `plan`'s training FLOPs for this batch
(`plan.forward_flops` x 3: the FLOPs its hours assume) per second over --peak-tflops. `mfu_model` counts only
useful work instead (real tokens, causal query-key pairs). A plain bf16 matmul is timed first, the ceiling this GPU
reaches in this run. Targets: measured / estimate within +-15 %, MFU >= 40 % (plan's default).

    python benchmarks/gpu_step.py [--tokens 16384] [--max-length 1024] [--steps 10] [--checkpointing]
        [--precision policy|bf16] [--attn sdpa|flash_attention_2] [--peak-tflops 989] [--json out.json]

Exits with a message when no CUDA GPU is present. `--arch tiny --device cpu` runs the same code on a tiny Llama on
the CPU (the plumbing only: its figures mean nothing).
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time

import common  # noqa: F401  (offline hub settings)

MEMORY_TOLERANCE = 0.15  # measured / estimate within 1 +- this
MFU_TARGET = 0.40  # dialsum plan's default MFU


def llama_config(arch: str):
    from transformers import LlamaConfig

    if arch == "tiny":
        sizes = dict(vocab_size=2000, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4)
        sizes.update(num_key_value_heads=2, max_position_embeddings=4096)
    else:  # Llama-3.2-3B (meta-llama/Llama-3.2-3B config.json; Bllossom's 3B has the same shape)
        sizes = dict(
            vocab_size=128256, hidden_size=3072, intermediate_size=8192, num_hidden_layers=28, num_attention_heads=24
        )
        sizes.update(num_key_value_heads=8, max_position_embeddings=131072)
    return LlamaConfig(**sizes, rope_theta=500000.0, tie_word_embeddings=True, use_cache=False)


def packed_batch(tokens: int, max_length: int, vocab: int, layout: str, seed: int = 0):
    """Samples of random length in [max_length/4, max_length) filling `tokens`; position_ids restart per sample.
    Rows layout: rows of max_length, the tail padded with one segment whose labels are -100; no label on a segment's
    first token (as dialsum's PackedBatchCollator)."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    lengths, total = [], 0
    while total < tokens:
        n = min(int(torch.randint(max_length // 4, max_length, (1,), generator=generator)), tokens - total)
        lengths.append(n)
        total += n
    position_ids = torch.cat([torch.arange(n) for n in lengths])[None]
    input_ids = torch.randint(0, vocab, (1, total), generator=generator)
    labels = input_ids.clone()
    rows, width = 1, total
    if layout == "rows":
        rows, width = -(-total // max_length), max_length
        tail = rows * max_length - total
        position_ids = torch.cat([position_ids, torch.arange(tail)[None]], dim=1).view(rows, width)
        input_ids = torch.cat([input_ids, torch.zeros(1, tail, dtype=input_ids.dtype)], dim=1).view(rows, width)
        labels = torch.cat([labels, torch.full((1, tail), -100)], dim=1).view(rows, width)
    labels[position_ids == 0] = -100  # a segment's first token is not predicted from the previous one (dialsum)
    return lengths, input_ids, position_ids, labels, rows, width


def matmul_tflops(device: str, n: int = 8192, repeats: int = 10) -> float | None:
    """bf16 TFLOP/s of an n x n x n product (the ceiling this GPU reaches in this run); None off CUDA."""
    import torch

    if device != "cuda":
        return None
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    torch.cuda.synchronize()
    seconds = (time.perf_counter() - start) / repeats
    del a, b
    torch.cuda.empty_cache()
    return 2 * n**3 / seconds / 1e12


def plan_figures(model_config, args, rows: int, width: int, lengths: list[int], trained: int) -> dict:
    """`dialsum plan`'s memory estimate and training FLOPs for exactly this batch, precision, kernel and
    checkpointing (full fine-tuning)."""
    from types import SimpleNamespace

    from dialsum.config import config_from_dict
    from dialsum.packing import packing_layout
    from dialsum.plan import Architecture, forward_flops, memory_estimate

    arch = Architecture.from_config(model_config.to_dict())
    plan_config = config_from_dict(
        {
            "model": {
                "name_or_path": "gpu_step",
                "attn_implementation": args.attn,
                "dtype": "auto" if args.precision == "policy" else "bfloat16",
            },
            "training": {"max_length": args.max_length, "gradient_checkpointing": args.checkpointing},
        }
    )
    parts = memory_estimate(arch, plan_config, "full", tokens=rows * width, row_length=width)
    activations = parts["activations_checkpointed" if args.checkpointing else "activations"]
    estimate = parts["weights"] + parts["gradients"] + parts["optimizer"] + activations
    if packing_layout(args.attn) == "flat":  # a varlen kernel computes each sample's causal triangle
        pairs = sum(n * (n + 1) // 2 for n in lengths)
    else:  # a dense kernel computes every pair of each row's L x L block, masked ones included
        pairs = rows * width * width
    epoch = SimpleNamespace(processed_tokens=rows * width, attention_pairs=pairs)
    useful = SimpleNamespace(processed_tokens=sum(lengths), attention_pairs=sum(n * (n + 1) // 2 for n in lengths))
    return {
        "architecture": arch,
        "memory_parts": {
            "weights": parts["weights"],
            "gradients": parts["gradients"],
            "optimizer": parts["optimizer"],
            "activations": activations,
        },
        "memory_estimate": estimate,
        "training_flops": 3 * forward_flops(arch, epoch, trained),
        "model_flops": 3 * forward_flops(arch, useful, trained),
    }


def run(args) -> dict:
    """Build the model, time the steps, and return every figure (the --json record)."""
    import torch
    import transformers
    from transformers import AutoModelForCausalLM
    from trl.trainer.utils import add_fused_lm_head

    from dialsum.packing import packing_layout

    device = args.device
    ceiling = matmul_tflops(device)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    model_config = llama_config(args.arch)
    weights = torch.float32 if args.precision == "policy" else torch.bfloat16
    autocast = args.precision == "policy"
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(model_config, dtype=weights, attn_implementation=args.attn)
    model.to(device)  # a no-op where the device context already placed it
    add_fused_lm_head(model, outputs=("log_probs", "entropy", "is_top1"))  # as SFTTrainer does
    if args.checkpointing:  # renamed in later transformers 5 releases; 5.17 (the GPU image's) has the old name only
        enable = getattr(model, "activation_checkpointing_enable", None)
        if enable is not None:
            enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=device == "cuda")
    params = sum(p.numel() for p in model.parameters())

    layout = packing_layout(args.attn)
    lengths, input_ids, position_ids, labels, rows, width = packed_batch(
        args.tokens, args.max_length, model_config.vocab_size, layout
    )
    trained = int((labels[:, 1:] != -100).sum())  # positions the fused head projects (next-token labels)
    input_ids, position_ids, labels = input_ids.to(device), position_ids.to(device), labels.to(device)
    extra = {}
    if layout == "flat":
        starts = torch.tensor([0] + lengths).cumsum(0).to(torch.int32).to(device)
        extra = dict(cu_seq_lens_q=starts, cu_seq_lens_k=starts, max_length_q=max(lengths), max_length_k=max(lengths))

    def sync() -> None:
        if device == "cuda":
            torch.cuda.synchronize()

    losses: list[float] = []

    def step() -> float:
        sync()
        start = time.perf_counter()
        with torch.autocast(device, dtype=torch.bfloat16, enabled=autocast):
            loss = model(
                input_ids=input_ids, position_ids=position_ids, labels=labels, fused_lm_head=True, **extra
            ).loss
        loss.backward()
        loss = loss.detach()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        sync()
        losses.append(loss.item())
        return time.perf_counter() - start

    for _ in range(args.warmup):
        step()
    times = [step() for _ in range(args.steps)]
    seconds = statistics.median(times)
    real = sum(lengths)
    plan = plan_figures(model_config, args, rows, width, lengths, trained)
    achieved = plan["training_flops"] / seconds
    record = {
        "arch": args.arch,
        "device": torch.cuda.get_device_name(0) if device == "cuda" else "cpu",
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "params": params,
        "attn": args.attn,
        "layout": layout,
        "precision": args.precision,
        "weights_dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
        "autocast": "bfloat16" if autocast else None,
        "optimizer_state_dtype": sorted(
            {str(v.dtype).removeprefix("torch.") for s in optimizer.state.values() for v in s.values() if v.dim()}
        ),
        "checkpointing": args.checkpointing,
        "samples": len(lengths),
        "real_tokens_per_step": real,
        "rows": rows,
        "row_length": width,
        "steps": args.steps,
        "warmup": args.warmup,
        "step_seconds": [round(t, 4) for t in times],
        "step_seconds_median": round(seconds, 4),
        "tokens_per_second": round(real / seconds, 1),
        "losses": [round(x, 4) for x in losses],
        "training_tflops_per_step": plan["training_flops"] / 1e12,
        "achieved_tflops": round(achieved / 1e12, 1),
        "peak_tflops": args.peak_tflops,
        "mfu": round(achieved / (args.peak_tflops * 1e12), 4),
        "mfu_model": round(plan["model_flops"] / seconds / (args.peak_tflops * 1e12), 4),
        "matmul_tflops_measured": round(ceiling, 1) if ceiling else None,
        "memory": None,
        "targets": {},
    }
    estimate = plan["memory_estimate"]
    memory = {
        "estimate_gb": round(estimate / 1e9, 3),
        "estimate_parts_gb": {k: round(v / 1e9, 3) for k, v in plan["memory_parts"].items()},
        "estimate_bytes": int(estimate),
        "measured_peak_gb": None,
        "measured_peak_bytes": None,
        "reserved_peak_gb": None,
        "ratio": None,
        "plan_tokens": rows * width,
        "plan_row_length": width,
    }
    if device == "cuda":
        measured = torch.cuda.max_memory_allocated()
        memory.update(
            measured_peak_gb=round(measured / 1e9, 3),
            measured_peak_bytes=measured,
            reserved_peak_gb=round(torch.cuda.max_memory_reserved() / 1e9, 2),
            ratio=round(measured / estimate, 3),
        )
        record["targets"]["memory_within_15pct"] = abs(measured / estimate - 1) <= MEMORY_TOLERANCE
    record["memory"] = memory
    record["targets"]["mfu_at_least_40pct"] = record["mfu"] >= MFU_TARGET
    record["losses_finite"] = all(math.isfinite(x) for x in losses)
    return record


def report(record: dict) -> None:
    memory = record["memory"]
    print(
        f"device: {record['device']}; params {record['params'] / 1e9:.2f} B; attn={record['attn']} "
        f"({record['layout']}); precision={record['precision']} (weights {record['weights_dtype']}, autocast "
        f"{record['autocast']}); checkpointing={record['checkpointing']}; {record['samples']} samples, "
        f"{record['real_tokens_per_step']} tokens in {record['rows']} x {record['row_length']}"
    )
    ceiling = record["matmul_tflops_measured"]
    print(
        f"step time (median of {record['steps']}): {record['step_seconds_median'] * 1000:.0f} ms; tokens/s: "
        f"{record['tokens_per_second']:,.0f}; {record['achieved_tflops']} TFLOP/s = MFU {record['mfu']:.1%} of "
        f"{record['peak_tflops']:g} (useful work only: {record['mfu_model']:.1%})"
        + (f"; a plain bf16 matmul reached {ceiling} TFLOP/s" if ceiling else "")
    )
    parts = ", ".join(f"{k} {v}" for k, v in memory["estimate_parts_gb"].items())
    measured = (
        f"measured peak {memory['measured_peak_gb']} GB (reserved {memory['reserved_peak_gb']}); "
        f"measured / estimate = {memory['ratio']:.2f}"
        if memory["ratio"] is not None
        else "no CUDA peak to compare"
    )
    print(f"memory: dialsum plan's estimate {memory['estimate_gb']} GB ({parts}); {measured}")
    print("targets: " + ", ".join(f"{k} {'met' if v else 'missed'}" for k, v in record["targets"].items()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", choices=["llama-3.2-3b", "tiny"], default="llama-3.2-3b")
    parser.add_argument("--tokens", type=int, default=16384, help="real tokens per step (packed samples)")
    parser.add_argument("--max-length", type=int, default=1024, help="row length (training.max_length)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps (the median is reported)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    parser.add_argument("--attn", default="sdpa", choices=["sdpa", "eager", "flash_attention_2"])
    parser.add_argument("--checkpointing", action="store_true", help="gradient checkpointing (non-reentrant)")
    parser.add_argument("--precision", choices=["policy", "bf16"], default="policy")
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 peak (H100/H200 SXM: 989)")
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--json", help="write every figure to this JSON file")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --json file")
    args = parser.parse_args(argv)

    import torch

    from dialsum.errors import DialsumError
    from dialsum.writer import OutputPlan, write_json

    if args.device == "cuda" and not torch.cuda.is_available():
        print("benchmarks/gpu_step.py needs a CUDA GPU; none is available here (nothing measured).")
        return 1
    if args.device == "cpu" and args.arch != "tiny":
        print("--device cpu runs --arch tiny only (a 3B model does not train on a CPU in a benchmark's time)")
        return 2
    if args.json:
        try:
            OutputPlan([], args.overwrite).file(args.json, "--json")  # before anything expensive
        except DialsumError as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
    try:
        record = run(args)
    except torch.cuda.OutOfMemoryError as error:  # a figure too: this batch does not fit this GPU this way
        peak = torch.cuda.max_memory_allocated() / 1e9
        print(f"out of memory at a peak of {peak:.1f} GB: {str(error).splitlines()[0]}")
        if args.json:
            write_json(args.json, {"error": "out of memory", "measured_peak_gb": round(peak, 2), "args": vars(args)})
        return 3
    report(record)
    if args.json:
        write_json(args.json, record)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
