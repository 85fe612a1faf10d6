"""generate.py: batching that changes nothing, summaries back in input order, the closer that stops generation."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

from conftest import SAMPLE, SHARED
from dialsum.cleanup import clean_summary
from dialsum.config import config_from_dict, save_config
from dialsum.data import Dialogue, Turn
from dialsum.generate import generate_summaries, lead_baseline
from dialsum.models import load_for_inference
from dialsum.suppress import suppression_table

SAMPLE_TEST = SAMPLE / "test.csv"
SHARED_TEST = SHARED / "data" / "dialogsum-ko" / "test.csv"


def make_config(model_path, **generation):
    kind = "seq2seq" if "bart" in str(model_path) else "causal"
    return config_from_dict({"model": {"name_or_path": str(model_path), "kind": kind}, "generation": generation})


def read_rows(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


# ---------------------------------------------------------------- batching


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["llama", "qwen3", "bart"])
def test_batched_equals_one_by_one_in_input_order(arch, sample_dialogues):
    from dialsum.tiny import tiny_model_cached

    path = tiny_model_cached(arch)
    # a random model repeats one token forever under plain greedy; forbid repeats to get varied text
    config = make_config(path, max_new_tokens=12, no_repeat_ngram_size=1, batch_size=4)
    model, tokenizer, config = load_for_inference(path, config)
    records = sample_dialogues[:7]
    hooks = _favour_own_input_words(model, tokenizer)
    try:
        batched = generate_summaries(model, tokenizer, records, config, progress=False)
        config.generation.batch_size = 1
        single = [generate_summaries(model, tokenizer, [r], config, progress=False)[0] for r in records]
    finally:
        for hook in hooks:
            hook.remove()
    assert batched == single and all(batched)
    assert len(set(batched)) == len(records)  # distinct per dialogue, so order is really checked


def _favour_own_input_words(model, tokenizer) -> list:
    """A random tiny model writes nearly the same text for every input (BART barely attends to its encoder; a
    decoder-only model drifts into the same tokens). These hooks make each row favour the non-special tokens of
    its own input (the encoder source, or the prompt at prefill), so each dialogue gets its own summary and a row
    that lands at the wrong position shows."""
    special = torch.tensor(sorted(set(tokenizer.all_special_ids)))
    seq2seq = model.config.is_encoder_decoder
    state = {}

    def on_input(module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is None or (not seq2seq and ids.shape[1] == 1):  # causal decoding steps: keep the prompt's bonus
            return
        bonus = torch.zeros(ids.shape[0], model.get_output_embeddings().out_features)
        bonus.scatter_(1, ids, 20.0)
        bonus[:, special] = 0.0
        state["bonus"] = bonus

    def on_lm_head(module, args, output):
        return output + state["bonus"][:, None, :].to(output.dtype)

    source = model.get_encoder() if seq2seq else model.get_decoder()
    return [
        source.register_forward_pre_hook(on_input, with_kwargs=True),
        model.get_output_embeddings().register_forward_hook(on_lm_head),
    ]


@pytest.mark.slow
def test_screen_takes_a_lora_run_directory(tiny_llama, tmp_path):
    """`screen` on a LoRA run directory: the run's own model section (base + adapter) is used, not the run
    directory as a base model. Mutation caught: screen overwriting model.name_or_path with the run dir."""
    from peft import LoraConfig, get_peft_model

    from dialsum.models import load_model, load_tokenizer
    from dialsum.run import screen

    config = make_config(tiny_llama, max_new_tokens=4, no_repeat_ngram_size=1)
    tokenizer = load_tokenizer(tiny_llama, config)
    run = tmp_path / "lora-run"
    adapter = get_peft_model(load_model(tiny_llama, config), LoraConfig(r=4, target_modules="all-linear"))
    adapter.save_pretrained(run / "model")
    tokenizer.save_pretrained(run / "model")
    save_config(config, run / "config.yaml")
    labeled = SAMPLE / "dev.csv"
    results = screen([str(run), "lead"], labeled, limit=3)
    assert {r["path"] for r in results} == {str(run), "lead"}  # "model" is the name shown, "path" what was given


# ---------------------------------------------------------------- post-processing


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("assistant\n\n#Person1#은 회의 시간을 정한다.", "#Person1#은 회의 시간을 정한다."),
        ("<|start_header_id|>assistant<|end_header_id|>\n\n요약: 두 사람이  만난다.<|eot_id|>", "두 사람이 만난다."),
        ("<|im_start|>assistant\n[요약] Mr. Smith가 $5를 낸다.", "Mr. Smith가 $5를 낸다."),
        ("<think>\n\n</think>\n\nSummary: 둘이\n\n 약속한다.", "둘이 약속한다."),
        ("**요약**: 회의가 연기된다.", "회의가 연기된다."),
        ("   ", ""),
        ("", ""),
        ("요약하면 둘은 친구다.", "요약하면 둘은 친구다."),  # a sentence starting with 요약 is content, not a label
    ],
)
def test_clean_summary(raw, expected, llama_tokenizer):
    assert clean_summary(raw, llama_tokenizer) == expected


def test_lead_baseline_drops_only_the_leading_tag():
    record = Dialogue("d", [Turn("#Person1#", "#Person2#, 내일 #Address#에서 봐요."), Turn("#Person2#", "네.")])
    assert lead_baseline(record) == "#Person2#, 내일 #Address#에서 봐요."


def test_byte_level_detection_does_not_silently_weaken_suppression(llama):
    """A byte-level BPE whose decoder does not say ByteLevel (here: replaced by a bare Fuse) is still read
    byte by byte, so a lone Han lead byte (0xE5, 'å' in GPT-2's alphabet) stays banned. Mutation caught: any
    decoder that does not name ByteLevel taken as 'not byte-level' (the token then reads as Latin 'å')."""
    import copy

    from tokenizers import decoders

    from dialsum.suppress import _is_byte_level

    tokenizer = copy.deepcopy(llama[1])
    tokenizer.backend_tokenizer.decoder = decoders.Fuse()
    assert _is_byte_level(tokenizer)
    table = suppression_table(tokenizer)
    assert table.static_bad[tokenizer.convert_tokens_to_ids("å")]


def test_the_closer_stops_generation_and_ends_the_summary(llama):
    """The token every label ends with is the first stop token and cuts a decoded summary, also when the
    tokenizer's EOS is the base model's <|end_of_text|>. Mutation caught: stop tokens from EOS only (the closer
    missing) / clean_summary keeping text after the closer."""
    import copy

    from dialsum.generate import stop_token_ids

    model, tokenizer = llama
    tokenizer = copy.deepcopy(tokenizer)
    tokenizer.eos_token = "<|end_of_text|>"
    original = model.generation_config.eos_token_id
    model.generation_config.eos_token_id = None  # only the tokenizer speaks here
    try:
        stops = stop_token_ids(model, tokenizer)
    finally:
        model.generation_config.eos_token_id = original
    assert tokenizer.convert_ids_to_tokens(stops[0]) == "<|eot_id|>"
    assert (
        clean_summary("두 사람이 만난다.<|eot_id|>assistant\n\n다른 말", end_token="<|eot_id|>") == "두 사람이 만난다."
    )
