"""Tiny offline models for tests and demos: random weights, a Korean byte-level BPE tokenizer trained
in-process, and the real families' chat templates, special tokens and configuration quirks.

The quirks are the point. Code that is wrong about any of these is wrong on the real model:

* Llama-3.2: the tokenizer itself prepends `<|begin_of_text|>` *and* the chat template prints it
  (double BOS unless you tokenize rendered chats with `add_special_tokens=False`); the template always
  writes a system block with a "Today Date" line taken from the clock; EOS is `<|eot_id|>` but the
  generation config stops on three ids; there is no pad token (`<|finetune_right_pad_id|>` exists).
* Qwen2.5: "You are Qwen, ..." is injected when no system message is given; NFC normalisation; the
  embedding matrix is larger than the tokenizer (ids with no token exist).
* Qwen3: an empty `<think>\\n\\n</think>\\n\\n` block before the final assistant answer, which the plain
  generation prompt lacks (only `enable_thinking=False` adds it); `<think>` is a token, not special.
* koBART: `tokenizer(text)` adds neither `<s>` nor `</s>` (the EOS of a target must be appended by
  hand); `</s>` is id 1 and `<pad>` id 3, not facebook/bart's 2 and 1.
* Llama and Qwen ship sampling defaults (`do_sample=True`, temperature, top_p) in generation_config.json.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Literal, get_args

TINY_VERSION = 2  # bump whenever the output changes: cached models are keyed by it
Arch = Literal["llama", "qwen2", "qwen3", "bart"]
ARCHES: tuple[str, ...] = get_args(Arch)

# ---------------------------------------------------------------- chat templates
# The real templates minus tool calling, formatted as in the real tokenizer_config.json files
# (transformers renders with trim_blocks / lstrip_blocks, so the layout adds no whitespace).

LLAMA3_TEMPLATE = r"""{{- bos_token }}
{%- if not date_string is defined %}
    {%- if strftime_now is defined %}
        {%- set date_string = strftime_now("%d %b %Y") %}
    {%- else %}
        {%- set date_string = "26 Jul 2024" %}
    {%- endif %}
{%- endif %}
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content']|trim %}
    {%- set messages = messages[1:] %}
{%- else %}
    {%- set system_message = "" %}
{%- endif %}
{{- "<|start_header_id|>system<|end_header_id|>\n\n" }}
{{- "Cutting Knowledge Date: December 2023\n" }}
{{- "Today Date: " + date_string + "\n\n" }}
{{- system_message }}
{{- "<|eot_id|>" }}
{%- for message in messages %}
    {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' }}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\n\n' }}
{%- endif %}
"""

QWEN2_TEMPLATE = r"""{%- if messages[0]['role'] == 'system' %}
    {{- '<|im_start|>system\n' + messages[0]['content'] + '<|im_end|>\n' }}
{%- else %}
    {{- '<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n' }}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant") %}
        {{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>' + '\n' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
{%- endif %}
"""

QWEN3_TEMPLATE = r"""{%- if messages[0].role == 'system' %}
    {{- '<|im_start|>system\n' + messages[0].content + '<|im_end|>\n' }}
{%- endif %}
{%- set ns = namespace(multi_step_tool=true, last_query_index=messages|length - 1) %}
{%- for message in messages[::-1] %}
    {%- set index = (messages|length - 1) - loop.index0 %}
    {%- if ns.multi_step_tool and message.role == "user" and message.content is string and not(message.content.startswith('<tool_response>') and message.content.endswith('</tool_response>')) %}
        {%- set ns.multi_step_tool = false %}
        {%- set ns.last_query_index = index %}
    {%- endif %}
{%- endfor %}
{%- for message in messages %}
    {%- if message.content is string %}
        {%- set content = message.content %}
    {%- else %}
        {%- set content = '' %}
    {%- endif %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) %}
        {{- '<|im_start|>' + message.role + '\n' + content + '<|im_end|>' + '\n' }}
    {%- elif message.role == "assistant" %}
        {%- set reasoning_content = '' %}
        {%- if message.reasoning_content is string %}
            {%- set reasoning_content = message.reasoning_content %}
        {%- else %}
            {%- if '</think>' in content %}
                {%- set reasoning_content = content.split('</think>')[0].rstrip('\n').split('<think>')[-1].lstrip('\n') %}
                {%- set content = content.split('</think>')[-1].lstrip('\n') %}
            {%- endif %}
        {%- endif %}
        {%- if loop.index0 > ns.last_query_index %}
            {%- if loop.last or (not loop.last and reasoning_content) %}
                {{- '<|im_start|>' + message.role + '\n<think>\n' + reasoning_content.strip('\n') + '\n</think>\n\n' + content.lstrip('\n') }}
            {%- else %}
                {{- '<|im_start|>' + message.role + '\n' + content }}
            {%- endif %}
        {%- else %}
            {{- '<|im_start|>' + message.role + '\n' + content }}
        {%- endif %}
        {{- '<|im_end|>\n' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
    {%- if enable_thinking is defined and enable_thinking is false %}
        {{- '<think>\n\n</think>\n\n' }}
    {%- endif %}
{%- endif %}
"""

# ---------------------------------------------------------------- vocabularies

# The real pre-tokenizer split patterns (Llama-3 groups digits by three, Qwen2 splits every digit).
# They keep "\n\n" apart from the following word, so a generation prompt ending in "\n\n" tokenizes
# as a prefix of prompt + answer; GPT-2's default pattern would glue the second "\n" to the answer.
LLAMA3_SPLIT = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# (special tokens, added non-special tokens) in the real id order. Llama/Qwen put them after the
# BPE vocabulary (ids 128000+ / 151643+); koBART puts them first (<s>=0, </s>=1, <pad>=3).
LLAMA3_SPECIALS = [
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|reserved_special_token_0|>",
    "<|reserved_special_token_1|>",
    "<|finetune_right_pad_id|>",
    "<|reserved_special_token_2|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eom_id|>",
    "<|eot_id|>",
    "<|python_tag|>",
]
QWEN_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
KOBART_SPECIALS = ["<s>", "</s>", "<usr>", "<pad>", "<sys>", "<unk>", "<mask>"]
VOCAB = {
    "llama": (LLAMA3_SPECIALS, []),
    "qwen2": (QWEN_SPECIALS, ["<tool_call>", "</tool_call>"]),
    "qwen3": (
        QWEN_SPECIALS,
        ["<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>", "<think>", "</think>"],
    ),
    "bart": (KOBART_SPECIALS, []),
}
NAMED_TOKENS = {
    "llama": {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"},  # no pad, as released
    "qwen2": {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"},  # no BOS, as released
    "qwen3": {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"},
    "bart": {
        "bos_token": "<s>",
        "eos_token": "</s>",
        "pad_token": "<pad>",
        "unk_token": "<unk>",
        "mask_token": "<mask>",
    },
}
MAX_POSITIONS = {"llama": 2048, "qwen2": 2048, "qwen3": 2048, "bart": 1024}

# Foreign-script text the tokenizer must produce as whole tokens, so that suppression has something
# to suppress (the real vocabularies are full of them); repeated so BPE merges them.
FOREIGN_TEXT = ["韓國語 漢字 會議 問題", "ありがとう ございます カタカナ", "Привет мир спасибо", "สวัสดี"]
FALLBACK_CORPUS = [
    "#Person1#: 안녕하세요, 무엇을 도와드릴까요?\n#Person2#: 내일 회의 시간을 확인하고 싶어요.",
    "#Person1#: 몇 시로 잡을까요?\n#Person2#: 오후 세 시가 좋겠어요. 회의실은 3층이에요.",
    "#Person1#은 #Person2#에게 회의 시간을 알려준다.",
    "#Person1#: 주문하시겠어요?\n#Person2#: 아메리카노 두 잔하고 샌드위치 하나 주세요.",
    "#Person2#는 커피 두 잔과 샌드위치를 주문한다.",
    "#Person1#: 요즘 날씨가 많이 추워졌네요.\n#Person2#: 네, 감기 조심하세요.",
    "두 사람은 추워진 날씨에 대해 이야기한다.",
    "#Person1#: 이 책을 언제까지 반납해야 하나요?\n#Person2#: 다음 주 금요일까지입니다.",
    "#Person2#는 #Person1#에게 책 반납 기한을 알려준다.",
    "#Person1#: 공항까지 얼마나 걸려요?\n#Person2#: 지하철로 한 시간 정도 걸립니다.",
    "Mr. Smith는 #PhoneNumber#로 연락해 달라고 한다.",
    "#Person1#: 제 이메일 주소는 #Email#입니다. 결과를 보내 주세요.",
    "#Person1#: 환불하고 싶은데요.\n#Person2#: 영수증 있으세요?\n#Person1#: 네, 여기 있습니다.",
    "#Person1#은 영수증을 보여 주고 환불을 요청한다.",
    "#Person1#: 주말에 뭐 할 거예요?\n#Person2#: 가족들이랑 바다에 가려고요.",
    "#Person2#는 주말에 가족과 바다에 갈 계획이다.",
]


def sample_corpus() -> list[str]:
    """Every text field of the bundled sample CSVs (the tokenizer's training text), else a fallback."""
    from dialsum.data import SAMPLE_DIR

    texts = []
    for path in sorted(SAMPLE_DIR.glob("*.csv")):
        with path.open(encoding="utf-8", newline="") as handle:
            for row in csv.DictReader(handle):
                texts += [value for key, value in row.items() if key != "fname" and value]
    return texts or list(FALLBACK_CORPUS)


def build_tokenizer(arch: str, corpus: list[str], vocab_size: int = 2000):
    """A byte-level BPE (any text encodes, through byte fragments when needed) with the family's
    special tokens, pre-tokenizer, BOS behaviour and chat template. `vocab_size` counts the specials."""
    from tokenizers import (
        AddedToken,
        Regex,
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
        trainers,
    )
    from transformers import PreTrainedTokenizerFast

    specials, added = VOCAB[arch]
    bpe = Tokenizer(models.BPE())
    if arch == "bart":
        bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)  # GPT-2's pattern, as facebook/bart
    else:
        split = LLAMA3_SPLIT if arch == "llama" else QWEN2_SPLIT
        bpe.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(split), behavior="isolated", invert=False),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
    if arch.startswith("qwen"):
        bpe.normalizer = normalizers.NFC()
    bpe.decoder = decoders.ByteLevel()
    first = specials if arch == "bart" else []  # koBART numbers its specials first, the others last
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - len(specials) - len(added) + len(first),
        special_tokens=first,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(list(corpus) + FOREIGN_TEXT * 50, trainer)
    bpe.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials if t not in first])
    bpe.add_tokens([AddedToken(t, special=False, normalized=False) for t in added])
    if arch == "llama":  # Llama-3's tokenizer.json prepends BOS to every encoding (the template does too)
        bos = "<|begin_of_text|>"
        bpe.post_processor = processors.Sequence(
            [
                processors.ByteLevel(trim_offsets=False),
                processors.TemplateProcessing(
                    single=f"{bos}:0 $A:0",
                    pair=f"{bos}:0 $A:0 {bos}:1 $B:1",
                    special_tokens=[(bos, bpe.token_to_id(bos))],
                ),
            ]
        )
    elif arch.startswith("qwen"):
        bpe.post_processor = processors.ByteLevel(trim_offsets=False)
    # koBART: no post-processor, so nothing is added around an encoding
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        clean_up_tokenization_spaces=False,
        model_max_length=MAX_POSITIONS[arch],
        **NAMED_TOKENS[arch],
    )
    tokenizer.chat_template = {"llama": LLAMA3_TEMPLATE, "qwen2": QWEN2_TEMPLATE, "qwen3": QWEN3_TEMPLATE}.get(arch)
    return tokenizer


# ---------------------------------------------------------------- models


def build_model(arch: str, tokenizer, seed: int = 0):
    """A 2-layer, 64-wide random model whose config and generation config carry the real ids and defaults."""
    import torch
    from transformers import (
        AutoModelForCausalLM,
        AutoModelForSeq2SeqLM,
        BartConfig,
        GenerationConfig,
        LlamaConfig,
        Qwen2Config,
        Qwen3Config,
    )

    torch.manual_seed(seed)
    ids = tokenizer.convert_tokens_to_ids
    vocab = len(tokenizer)
    if arch == "bart":
        eos = tokenizer.eos_token_id
        config = BartConfig(
            vocab_size=vocab,
            d_model=64,
            encoder_layers=2,
            decoder_layers=2,
            encoder_attention_heads=4,
            decoder_attention_heads=4,
            encoder_ffn_dim=128,
            decoder_ffn_dim=128,
            max_position_embeddings=MAX_POSITIONS[arch],
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=eos,
            pad_token_id=tokenizer.pad_token_id,
            decoder_start_token_id=eos,
            forced_eos_token_id=eos,
        )
        model = AutoModelForSeq2SeqLM.from_config(config)
        model.generation_config = GenerationConfig(
            bos_token_id=config.bos_token_id,
            eos_token_id=eos,
            pad_token_id=config.pad_token_id,
            decoder_start_token_id=eos,
            forced_eos_token_id=eos,
        )
        return model

    small = dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=MAX_POSITIONS[arch],
        tie_word_embeddings=True,
    )
    if arch == "llama":  # Llama-3.2-Instruct: stops on <|end_of_text|>, <|eom_id|>, <|eot_id|>; no pad
        stops = ids(["<|end_of_text|>", "<|eom_id|>", "<|eot_id|>"])
        config = LlamaConfig(vocab_size=vocab, bos_token_id=tokenizer.bos_token_id, eos_token_id=stops, **small)
        generation = GenerationConfig(
            bos_token_id=config.bos_token_id, eos_token_id=stops, do_sample=True, temperature=0.6, top_p=0.9
        )
    else:  # Qwen: the embedding matrix is padded past the tokenizer (151936 rows for 151665 tokens)
        end, im_end = ids(["<|endoftext|>", "<|im_end|>"])
        family = Qwen2Config if arch == "qwen2" else Qwen3Config
        extra = {"head_dim": 16} if arch == "qwen3" else {}
        config = family(
            vocab_size=-(-vocab // 128) * 128, bos_token_id=end, eos_token_id=im_end, pad_token_id=end, **small, **extra
        )
        sampling = (
            dict(temperature=0.7, top_p=0.8, top_k=20, repetition_penalty=1.05)
            if arch == "qwen2"
            else dict(temperature=0.6, top_p=0.95, top_k=20)
        )
        generation = GenerationConfig(
            bos_token_id=end, eos_token_id=[im_end, end], pad_token_id=end, do_sample=True, **sampling
        )
    model = AutoModelForCausalLM.from_config(config)
    model.generation_config = generation
    return model


REAL_MODEL_TYPES = {"llama": "llama", "qwen2": "qwen2", "qwen3": "qwen3", "bart": "bart"}


def arch_of(tokenizer_dir: str | Path) -> str:
    """The tiny architecture matching a real model folder's config.json `model_type`."""
    path = Path(tokenizer_dir) / "config.json"
    if not path.is_file():
        raise ValueError(f"{tokenizer_dir}: no config.json to read the architecture from; pass --arch")
    model_type = json.loads(path.read_text(encoding="utf-8")).get("model_type")
    if model_type not in REAL_MODEL_TYPES:
        raise ValueError(f"{path}: model_type {model_type!r} is not one of {', '.join(REAL_MODEL_TYPES)}")
    return REAL_MODEL_TYPES[model_type]


def make_tiny_model(
    arch: Arch,
    output_dir: str | Path,
    corpus: list[str] | None = None,
    vocab_size: int = 2000,
    seed: int = 0,
    tokenizer_dir: str | Path | None = None,
) -> Path:
    """Write a tiny random model + tokenizer (safetensors) that the Auto classes load offline.

    `tokenizer_dir`: build the tiny model around a REAL tokenizer (e.g. ../shared/models/llama-3.2-korean-
    bllossom-3b): its full vocabulary, chat template and special tokens, random 64-wide weights."""
    if arch not in ARCHES:
        raise ValueError(f"arch must be one of {', '.join(ARCHES)}, got {arch!r}")
    output_dir = Path(output_dir)
    if tokenizer_dir is not None:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    else:
        tokenizer = build_tokenizer(arch, corpus if corpus is not None else sample_corpus(), vocab_size)
    model = build_model(arch, tokenizer, seed)
    from dialsum.writer import atomic_directory

    with atomic_directory(output_dir) as scratch:  # a kill leaves no half-written model
        model.save_pretrained(scratch)
        tokenizer.save_pretrained(scratch)
        if arch.startswith("qwen") and tokenizer_dir is None:  # declare the tokenizer as the real Qwen repos do
            _update_json(
                scratch / "tokenizer_config.json", tokenizer_class="Qwen2Tokenizer", bos_token=None, unk_token=None
            )
    return output_dir


def _update_json(path: Path, **values) -> None:
    from dialsum.writer import write_json

    data = json.loads(path.read_text(encoding="utf-8"))
    data.update(values)
    write_json(path, data)


def tiny_model_cached(arch: Arch) -> Path:
    """Build once per machine (in $DIALSUM_TINY_CACHE or ~/.cache/dialsum/tiny), then reuse.

    The model is built in a scratch directory and renamed into place, so a parallel test process
    either sees a complete model or none, never half of one.
    """
    if arch not in ARCHES:
        raise ValueError(f"arch must be one of {', '.join(ARCHES)}, got {arch!r}")
    root = Path(os.environ.get("DIALSUM_TINY_CACHE") or Path.home() / ".cache" / "dialsum" / "tiny")
    target = root / f"{arch}-v{TINY_VERSION}"
    if (target / "config.json").is_file():
        return target
    root.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{arch}-", dir=root))
    try:
        make_tiny_model(arch, scratch)
        scratch.chmod(0o755)  # mkdtemp makes it private
        os.rename(scratch, target)  # atomic; fails if another process got there first
    except OSError:
        if not (target / "config.json").is_file():
            raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return target
