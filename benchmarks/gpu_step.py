"""One training step of a real-size architecture on a GPU: tokens/s and model FLOPs utilisation (MFU).

Llama-3.2-3B's config (random weights, no download), bf16, packed batch (position_ids restart, no
attention mask, as dialsum trains: rows of --max-length on sdpa/eager, one flattened row on flash-attention),
AdamW, gradient checkpointing optional. Also prints `dialsum plan`'s memory estimate for the same batch next to
the measured peak, and their ratio.

    python benchmarks/gpu_step.py [--tokens 16384] [--max-length 1024] [--steps 10]
        [--attn sdpa|flash_attention_2] [--peak-tflops 989]

Exits with a clear message when no CUDA GPU is present. MFU = 6 · params · tokens/s (+ attention FLOPs)
divided by the GPU's dense bf16 peak (H100 SXM: 989 TFLOP/s; pass --peak-tflops for others).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time


def llama_3_2_3b_config():
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=128256,
        hidden_size=3072,
        intermediate_size=8192,
        num_hidden_layers=28,
        num_attention_heads=24,
        num_key_value_heads=8,
        max_position_embeddings=131072,
        rope_theta=500000.0,
        tie_word_embeddings=True,
        use_cache=False,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=16384, help="tokens per step (flattened packed batch)")
    parser.add_argument("--max-length", type=int, default=1024, help="length of each packed sample")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--attn", default="sdpa")
    parser.add_argument("--checkpointing", action="store_true")
    parser.add_argument("--peak-tflops", type=float, default=989.0)
    args = parser.parse_args()

    import torch

    if not torch.cuda.is_available():
        print("benchmarks/gpu_step.py needs a CUDA GPU; none is available here (nothing measured).")
        return 1
    from transformers import AutoModelForCausalLM

    config = llama_3_2_3b_config()
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16, attn_implementation=args.attn)
    if args.checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=True)
    params = sum(p.numel() for p in model.parameters())

    # Samples of varying length packed into one row; positions restart per sample.
    lengths, total = [], 0
    generator = torch.Generator().manual_seed(0)
    while total < args.tokens:
        n = min(
            int(torch.randint(args.max_length // 4, args.max_length, (1,), generator=generator)), args.tokens - total
        )
        lengths.append(n)
        total += n
    position_ids = torch.cat([torch.arange(n) for n in lengths])[None]
    input_ids = torch.randint(0, config.vocab_size, (1, total), generator=generator)
    rows = 1
    if not args.attn.startswith("flash"):  # dialsum's layout on dense kernels: rows of max_length, tail padded
        rows = -(-total // args.max_length)
        tail = rows * args.max_length - total
        position_ids = torch.cat([position_ids, torch.arange(tail)[None]], dim=1).view(rows, args.max_length)
        padding = torch.zeros(1, tail, dtype=input_ids.dtype)
        input_ids = torch.cat([input_ids, padding], dim=1).view(rows, args.max_length)
    position_ids, input_ids = position_ids.cuda(), input_ids.cuda()
    labels = input_ids.clone()
    starts = torch.tensor([0] + lengths).cumsum(0).to(torch.int32).cuda()
    extra = {}
    if args.attn.startswith("flash"):
        extra = dict(cu_seq_lens_q=starts, cu_seq_lens_k=starts, max_length_q=max(lengths), max_length_k=max(lengths))

    def step() -> float:
        torch.cuda.synchronize()
        start = time.perf_counter()
        loss = model(input_ids=input_ids, position_ids=position_ids, labels=labels, use_cache=False, **extra).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        return time.perf_counter() - start

    for _ in range(2):
        step()  # warm-up
    times = [step() for _ in range(args.steps)]
    seconds = statistics.median(times)
    tokens_per_second = total / seconds
    attention_flops = 6 * 2 * config.num_hidden_layers * config.hidden_size * sum(n * n for n in lengths) / total
    flops_per_token = 6 * params + attention_flops
    mfu = tokens_per_second * flops_per_token / (args.peak_tflops * 1e12)
    print(
        f"device: {torch.cuda.get_device_name(0)}; params {params / 1e9:.2f} B; attn={args.attn}; "
        f"checkpointing={args.checkpointing}; {len(lengths)} samples, {total} tokens/step"
    )
    print(
        f"step time (median of {args.steps}): {seconds * 1000:.0f} ms; tokens/s: {tokens_per_second:,.0f}; "
        f"MFU: {mfu:.1%}; "
        f"peak memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB"
    )

    # dialsum plan's estimate for the same batch. This script computes the loss from full logits (no fused LM head):
    # add bf16 logits, their fp32 copy for the loss and its gradient (10 bytes per position and vocab entry).
    from dialsum.config import config_from_dict
    from dialsum.plan import Architecture, memory_estimate

    arch = Architecture.from_config(config.to_dict())
    plan_config = config_from_dict({"model": {"name_or_path": "gpu_step", "attn_implementation": args.attn}})
    parts = memory_estimate(arch, plan_config, "full", tokens=input_ids.numel(), row_length=args.max_length)
    activations = parts["activations_checkpointed" if args.checkpointing else "activations"]
    estimate = parts["weights"] + parts["gradients"] + parts["optimizer"] + activations
    estimate += input_ids.numel() * config.vocab_size * 10
    measured = torch.cuda.max_memory_allocated()
    print(
        f"memory: estimate {estimate / 1e9:.1f} GB (weights {parts['weights'] / 1e9:.1f}, gradients "
        f"{parts['gradients'] / 1e9:.1f}, optimizer {parts['optimizer'] / 1e9:.1f}, "
        f"activations {activations / 1e9:.1f}, "
        f"logits {input_ids.numel() * config.vocab_size * 10 / 1e9:.1f}); measured peak {measured / 1e9:.1f} GB; "
        f"measured / estimate = {measured / estimate:.2f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
