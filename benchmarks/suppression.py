"""Cost of foreign-script suppression: generation time with it on vs off, and the processor itself.

1. End to end: `generate_summaries` on the tiny model, suppression on vs off (interleaved repeats,
   medians), overhead as a ratio (goal: < 10%).
2. The processor alone, per generation step, on a realistic vocabulary: a byte-level BPE of
   --vocab tokens trained on the dialogue corpus (real Llama-3 / Qwen vocabularies are 128k-152k
   and not available offline), scores of width --width (default 128256, Llama-3's), a batch whose
   rows sit in the middle of Hangul syllables (the dynamic, per-prefix path). Also the one-off table
   build time.
3. The real vocabularies in ../shared/models (Bllossom 128,256, Qwen2.5 151,665, Qwen3 151,669,
   KoBART 30,000 tokens): tokens banned always, table build time (uncached), per-step cost at the
   vocabulary's own width. (The seed project banned ~121k of Bllossom's 128k.)

    python benchmarks/suppression.py [--n 32] [--batch 16] [--max-new-tokens 64] [--repeats 5] [--vocab 32000]
"""

from __future__ import annotations

import argparse
import csv
import statistics
import time

from common import SAMPLE, SHARED, real_dev_or_sample


def end_to_end(args) -> None:
    import torch

    from dialsum.config import config_from_dict
    from dialsum.data import load_dialogues
    from dialsum.generate import generate_summaries
    from dialsum.models import load_for_inference, resolve_model_path

    data = real_dev_or_sample()
    dialogues = load_dialogues(data)[: args.n]
    path = resolve_model_path(args.model)
    config = config_from_dict(
        {
            "model": {"name_or_path": path},
            "generation": {
                "max_new_tokens": args.max_new_tokens,
                "batch_size": args.batch,
                "do_sample": True,
                "temperature": 1.0,
            },
        }
    )
    model, tokenizer, config = load_for_inference(path, config)
    device = next(model.parameters()).device
    print(
        f"[1] {args.model} on {device} ({torch.get_num_threads()} threads), {len(dialogues)} dialogues, batch "
        f"{args.batch}, {args.max_new_tokens} new tokens, sampling (so rows visit many byte states)"
    )

    def run(on: bool) -> float:
        config.generation.suppress_foreign_scripts = on
        torch.manual_seed(0)
        start = time.perf_counter()
        generate_summaries(model, tokenizer, dialogues, config, progress=False)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    from dialsum.suppress import ForeignScriptSuppressor

    spent = [0.0]
    original = ForeignScriptSuppressor.__call__

    def timed(self, input_ids, scores):  # time inside the processor, measured directly
        start = time.perf_counter()
        out = original(self, input_ids, scores)
        spent[0] += time.perf_counter() - start
        return out

    ForeignScriptSuppressor.__call__ = timed
    run(True), run(False)  # warm-up (and the suppression table is built here, once)
    spent[0] = 0.0
    times = {True: [], False: []}
    for _ in range(args.repeats):
        for on in (False, True):
            times[on].append(run(on))
    off, on = statistics.median(times[False]), statistics.median(times[True])
    print(
        f"    off {off:.2f}s  on {on:.2f}s  (medians of {args.repeats})  on/off = {on / off:.3f}  "
        f"overhead {100 * (on / off - 1):+.1f}%"
    )
    share = spent[0] / sum(times[True])
    print(
        f"    time inside the processor: {100 * share:.1f}% of the suppressed runs' time "
        f"(the overhead without timing noise)"
    )
    ForeignScriptSuppressor.__call__ = original


def processor_alone(args) -> None:
    from dialsum.tiny import build_tokenizer

    texts = []
    for path in [SHARED / "train.csv", SHARED / "dev.csv", SAMPLE / "train.csv"]:
        if path.is_file():
            with path.open(encoding="utf-8", newline="") as handle:
                texts += [
                    value
                    for row in csv.DictReader(handle)
                    for key, value in row.items()
                    if key in ("dialogue", "summary")
                ]
            break
    start = time.perf_counter()
    tokenizer = build_tokenizer("llama", texts, vocab_size=args.vocab)
    trained = time.perf_counter() - start
    title = f"[2] byte-level BPE of {len(tokenizer)} tokens (trained in {trained:.1f}s)"
    per_step(tokenizer, title, args.width, args.batch)


def real_vocabularies(args) -> None:
    from transformers import AutoTokenizer

    models = SHARED.parent.parent / "models"
    folders = sorted(p for p in models.glob("*") if (p / "tokenizer_config.json").is_file()) if models.is_dir() else []
    if not folders:
        print("[3] ../shared/models not present: real vocabularies skipped")
        return
    for folder in folders:
        tokenizer = AutoTokenizer.from_pretrained(str(folder))
        per_step(tokenizer, f"[3] {folder.name} ({len(tokenizer)} tokens)", len(tokenizer), args.batch)


def per_step(tokenizer, title: str, width: int, batch: int) -> None:
    """Table build time and banned count, then the processor's per-step cost on a batch mid-syllable."""
    import torch

    from dialsum.suppress import ForeignScriptSuppressor, _bytes_to_unicode, _is_byte_level, suppression_table

    start = time.perf_counter()
    table = suppression_table(tokenizer)
    built = time.perf_counter() - start
    fragments = sum(1 for b in table.token_bytes if b and (0x80 <= b[0] <= 0xBF or b[-1] >= 0xC0))
    print(
        f"{title}: table built in {built:.2f}s, {int(table.static_bad.sum())} tokens banned always "
        f"({table.static_bad.mean():.1%}), {fragments} byte-fragment tokens"
    )
    if not _is_byte_level(tokenizer):
        print("    (not byte-level: no mid-character states to time)")
        return
    steps = 200
    width = max(width, len(tokenizer))
    filler = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    prompt = [filler] * 8
    text = "두 사람은 내일 오후 세 시에 회의실에서 만나기로 한다. Mr. Smith는 보고서를 가져온다."
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    byte_token = {byte: tokenizer.convert_tokens_to_ids(char) for byte, char in _bytes_to_unicode().items()}
    syllables = [c for c in text if "가" <= c <= "힣"]
    rows = []
    for row in range(batch):  # rows at different points of the text; all but a quarter end in a split syllable
        cut = 3 + (row * 7) % (len(ids) - 3)
        split = syllables[row % len(syllables)].encode()[: 1 + row % 2] if row % 4 else b""
        rows.append(prompt + ids[:cut] + [byte_token[b] for b in split])
    length = max(len(r) for r in rows)
    generated = torch.tensor([[filler] * (length - len(r)) + r for r in rows])
    pending = sum(1 for r in rows if table.pending_after(r[len(prompt) :], complete=True))
    scores = torch.randn(batch, width)
    processor = ForeignScriptSuppressor(tokenizer, prompt_length=len(prompt))
    start = time.perf_counter()
    processor(generated, scores)  # computes the mask of each new pending prefix (then cached)
    cold = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(steps):
        processor(generated, scores)
    per_call = (time.perf_counter() - start) / steps
    start = time.perf_counter()
    for _ in range(steps):
        scores.masked_fill(torch.zeros(width, dtype=torch.bool), float("-inf"))
    floor = (time.perf_counter() - start) / steps
    print(
        f"    per step, batch {batch} ({pending} rows mid-character), width {width}: {1e3 * per_call:.3f} ms "
        f"(a bare masked_fill of the same scores: {1e3 * floor:.3f} ms); first call, computing "
        f"{len(table._state_masks)} prefix masks: {1e3 * cold:.1f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=32)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--model", default="tiny:llama")
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--width", type=int, default=128256)
    parser.add_argument("--real-only", action="store_true", help="only part 3, the real vocabularies")
    args = parser.parse_args()
    if not args.real_only:
        end_to_end(args)
        processor_alone(args)
    real_vocabularies(args)


if __name__ == "__main__":
    main()
