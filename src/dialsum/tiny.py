"""Tiny offline models for tests and demos: random weights, a Korean byte-level BPE tokenizer trained
in-process, and chat templates that reproduce the real families' quirks.

The quirks are the point: Llama-3.1+ prints a "Today Date" line and always a system block; Qwen2.5
injects "You are Qwen..." when no system message is given; Qwen3 puts an empty `<think>` block before
the final assistant answer. Encoding code that is wrong about any of these is wrong on the real model.
"""

from __future__ import annotations

import csv
import os
import shutil
import tempfile
from pathlib import Path
from typing import Literal

TINY_VERSION = 1
ARCHES = ("llama", "qwen2", "qwen3", "bart")

LLAMA3_TEMPLATE = (
    "{{- bos_token }}"
    "{%- if not date_string is defined %}{%- if strftime_now is defined %}"
    "{%- set date_string = strftime_now('%d %b %Y') %}{%- else %}{%- set date_string = '26 Jul 2024' %}{%- endif %}{%- endif %}"
    "{%- if messages[0]['role'] == 'system' %}{%- set system_message = messages[0]['content'] | trim %}"
    "{%- set messages = messages[1:] %}{%- else %}{%- set system_message = '' %}{%- endif %}"
    "{{- '<|start_header_id|>system<|end_header_id|>\\n\\n' }}"
    "{{- 'Cutting Knowledge Date: December 2023\\n' }}"
    "{{- 'Today Date: ' + date_string + '\\n\\n' }}"
    "{{- system_message }}{{- '<|eot_id|>' }}"
    "{%- for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}"
)

QWEN2_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if not (loop.first and message['role'] == 'system') %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

QWEN3_TEMPLATE = (
    "{%- for message in messages %}"
    "{%- if message['role'] == 'assistant' and loop.last %}"
    "{{- '<|im_start|>assistant\\n<think>\\n\\n</think>\\n\\n' + message['content'] | trim + '<|im_end|>\\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}{{- '<think>\\n\\n</think>\\n\\n' }}{%- endif %}"
    "{%- endif %}"
)

# Foreign-script text the tokenizer must be able to produce as whole tokens, so that
# suppression has something to suppress (the real models' vocabularies are full of them).
FOREIGN_TEXT = ["韓國語 漢字 會議 問題", "ありがとう ございます カタカナ", "Привет мир спасибо", "สวัสดี"]
FALLBACK_CORPUS = [
    "#Person1#: 안녕하세요, 무엇을 도와드릴까요?\n#Person2#: 내일 회의 시간을 확인하고 싶어요.",
    "#Person1#은 #Person2#에게 회의 시간을 알려준다.",
    "Mr. Smith는 #PhoneNumber#로 연락해 달라고 한다.",
]


def sample_corpus() -> list[str]:
    """Every text field of the bundled sample CSVs, the tokenizer's training text."""
    from dialsum.data import SAMPLE_DIR

    texts = []
    for path in sorted(SAMPLE_DIR.glob("*.csv")):
        with path.open(encoding="utf-8", newline="") as handle:
            for row in csv.DictReader(handle):
                texts += [value for key, value in row.items() if key != "fname" and value]
    return texts or FALLBACK_CORPUS


def _special_tokens(arch: str) -> dict:
    if arch == "llama":
        return {
            "tokens": ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
            "bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>",
        }
    if arch in ("qwen2", "qwen3"):
        return {
            "tokens": ["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
            "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>",
        }
    return {
        "tokens": ["<s>", "<pad>", "</s>", "<unk>", "<mask>"],
        "bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>", "mask_token": "<mask>",
    }


def build_tokenizer(arch: str, corpus: list[str], vocab_size: int = 2000):
    """A byte-level BPE (any text encodes, through byte fragments when needed) with the family's specials."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = _special_tokens(arch)
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials["tokens"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    bpe.train_from_iterator(list(corpus) + FOREIGN_TEXT * 50, trainer)
    if arch == "bart":  # BART wraps every sequence in <s> ... </s>
        bpe.post_processor = processors.TemplateProcessing(
            single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>",
            special_tokens=[("<s>", bpe.token_to_id("<s>")), ("</s>", bpe.token_to_id("</s>"))],
        )
    names = {k: v for k, v in specials.items() if k != "tokens"}
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, clean_up_tokenization_spaces=False, **names)
    tokenizer.chat_template = {"llama": LLAMA3_TEMPLATE, "qwen2": QWEN2_TEMPLATE, "qwen3": QWEN3_TEMPLATE}.get(arch)
    return tokenizer


def build_model(arch: str, tokenizer, seed: int = 0):
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, BartConfig, LlamaConfig, Qwen2Config, Qwen3Config

    torch.manual_seed(seed)
    vocab = len(tokenizer)
    small = dict(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, max_position_embeddings=2048, tie_word_embeddings=True)
    if arch == "llama":
        eot, end = tokenizer.convert_tokens_to_ids(["<|eot_id|>", "<|end_of_text|>"])
        config = LlamaConfig(**small, bos_token_id=tokenizer.bos_token_id, eos_token_id=[eot, end])
    elif arch == "qwen2":
        config = Qwen2Config(**small, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    elif arch == "qwen3":
        config = Qwen3Config(**small, head_dim=16, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    else:
        config = BartConfig(
            vocab_size=vocab, d_model=64, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
            decoder_attention_heads=4, encoder_ffn_dim=128, decoder_ffn_dim=128, max_position_embeddings=1024,
            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
            decoder_start_token_id=tokenizer.eos_token_id, forced_bos_token_id=None, forced_eos_token_id=tokenizer.eos_token_id,
        )
        return AutoModelForSeq2SeqLM.from_config(config)
    model = AutoModelForCausalLM.from_config(config)
    model.generation_config.eos_token_id = config.eos_token_id
    return model


def make_tiny_model(arch: Literal["llama", "qwen2", "qwen3", "bart"], output_dir: str | Path,
                    corpus: list[str] | None = None, vocab_size: int = 2000, seed: int = 0) -> Path:
    """Write a tiny random model + tokenizer (safetensors) loadable with the Auto classes, offline."""
    if arch not in ARCHES:
        raise ValueError(f"arch must be one of {', '.join(ARCHES)}, got {arch!r}")
    output_dir = Path(output_dir)
    tokenizer = build_tokenizer(arch, corpus if corpus is not None else sample_corpus(), vocab_size)
    model = build_model(arch, tokenizer, seed)
    output_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
    return output_dir


def tiny_model_cached(arch: str) -> Path:
    """Build once per machine (in $DIALSUM_TINY_CACHE or ~/.cache/dialsum/tiny), then reuse."""
    root = Path(os.environ.get("DIALSUM_TINY_CACHE", Path.home() / ".cache" / "dialsum" / "tiny"))
    target = root / f"{arch}-v{TINY_VERSION}"
    if (target / "config.json").is_file():
        return target
    root.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{arch}-", dir=root))
    make_tiny_model(arch, scratch)
    try:
        os.rename(scratch, target)  # atomic: parallel builders never see half a model
    except OSError:
        shutil.rmtree(scratch, ignore_errors=True)  # another process won the race
    return target
