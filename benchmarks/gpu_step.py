"""One training step of a real-size architecture on a GPU: tokens/s and model FLOPs utilisation (MFU).

Llama-3.2-3B's config (random weights, no download), bf16, packed batch (position_ids restart, no
attention mask, as dialsum trains), AdamW, gradient checkpointing optional.

    python benchmarks/gpu_step.py [--tokens 16384] [--max-length 1024] [--steps 10] [--attn sdpa|flash_attention_2] [--peak-tflops 989]

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
        vocab_size=128256, hidden_size=3072, intermediate_size=8192, num_hidden_layers=28,
        num_attention_heads=24, num_key_value_heads=8, max_position_embeddings=131072,
        rope_theta=500000.0, tie_word_embeddings=True, use_cache=False,
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
        n = min(int(torch.randint(args.max_length // 4, args.max_length, (1,), generator=generator)), args.tokens - total)
        lengths.append(n)
        total += n
    position_ids = torch.cat([torch.arange(n) for n in lengths])[None].cuda()
    input_ids = torch.randint(0, config.vocab_size, (1, total), generator=generator).cuda()
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
    print(f"device: {torch.cuda.get_device_name(0)}; params {params / 1e9:.2f} B; attn={args.attn}; "
          f"checkpointing={args.checkpointing}; {len(lengths)} samples, {total} tokens/step")
    print(f"step time (median of {args.steps}): {seconds * 1000:.0f} ms; tokens/s: {tokens_per_second:,.0f}; MFU: {mfu:.1%}; "
          f"peak memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
