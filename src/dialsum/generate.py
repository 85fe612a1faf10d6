"""Generate summaries: batched, left-padded, from exactly the prompt training used; no foreign scripts.

`predict(model_path, data_path, output_path)` is the whole workflow: resolve the run directory and
its config, load the model (merging a LoRA adapter), generate, write `fname,summary` in input order.

Foreign scripts. Korean fine-tunes of multilingual models sometimes drift into Chinese characters,
kana or Cyrillic. `ForeignScriptSuppressor` is a `LogitsProcessor` that makes such characters
impossible, not just unlikely. With a byte-level BPE vocabulary a token is a run of *bytes*, and a
character can be split across tokens (in Llama-3 many Hangul syllables are two tokens). So the
processor works on bytes and simulates the UTF-8 decoder over the generated text:

* a token whose bytes, decoded from a clean state, contain a forbidden character is banned always
  (the static mask);
* when the generated text ends in an incomplete multi-byte sequence (pending bytes), a token is
  banned if appending it would complete a forbidden character;
* any token that would leave pending bytes that can only complete into forbidden characters (the
  code points a prefix can still become form one range; e.g. a lone 0xE5 pins down U+5000-U+5FFF,
  all Han) is banned too; a prefix that may still become an allowed character (0xEA-0xED: Hangul)
  stays allowed and the next step bans the continuations that would complete it wrongly.

The invariant: the bytes of the generated (non-special) tokens never decode, with the standard
replacement of invalid sequences, to a forbidden character. EOS, end-of-turn and pad are never banned,
so a step always has an allowed token.
"""

from __future__ import annotations

import json
import math
import re
import sys
import time
import weakref
from bisect import bisect_right
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np
import torch
from transformers import LogitsProcessor

from dialsum.config import Config, config_from_dict, load_config, token_budget
from dialsum.data import Dialogue, load_dialogues, write_predictions
from dialsum.encode import encode_inference_inputs, encode_prompt, end_of_turn_token
from dialsum.rundir import CONFIG_FILE, MODEL_DIR
from dialsum.errors import ConfigError, DialsumError, RunDirError
from dialsum.prompt import resolve_topic_policy, topic_mismatch
from dialsum.scripts import SCRIPT_RANGES, foreign_script_pattern, has_foreign_script

__all__ = [
    "ForeignScriptSuppressor",
    "InferenceSource",
    "banned_bytes",
    "clean_summary",
    "generate_candidates",
    "generate_summaries",
    "lead_baseline",
    "load_for_inference",
    "predict",
    "resolve_inference_source",
    "stop_token_ids",
]

ADAPTER_CONFIG = "adapter_config.json"


# ==================================================================================================
# UTF-8, byte by byte
# ==================================================================================================


REPLACEMENT = 0xFFFD  # what a broken UTF-8 sequence decodes to: banned like a foreign script


def _sequence_length(lead: int) -> int:
    """Bytes in the UTF-8 sequence a byte starts: 1 (ASCII), 2-4, or 0 (a continuation or invalid byte)."""
    if lead < 0x80:
        return 1
    if 0xC2 <= lead <= 0xDF:
        return 2
    if 0xE0 <= lead <= 0xEF:
        return 3
    if 0xF0 <= lead <= 0xF4:
        return 4
    return 0


def _next_byte_range(pending: bytes) -> tuple[int, int]:
    """Valid values of the byte after `pending` (a valid, incomplete prefix), per RFC 3629:
    no overlong forms, no surrogates, nothing above U+10FFFF."""
    if len(pending) == 1:
        return {0xE0: (0xA0, 0xBF), 0xED: (0x80, 0x9F), 0xF0: (0x90, 0xBF), 0xF4: (0x80, 0x8F)}.get(pending[0], (0x80, 0xBF))
    return 0x80, 0xBF


def _prefix_code_points(pending: bytes) -> tuple[int, int]:
    """The range [lo, hi] of code points a valid incomplete prefix can still complete into."""
    need = _sequence_length(pending[0]) - len(pending)
    lo, hi = _next_byte_range(pending)
    low = pending + bytes([lo]) + b"\x80" * (need - 1)
    high = pending + bytes([hi]) + b"\xbf" * (need - 1)
    return ord(low.decode("utf-8")), ord(high.decode("utf-8"))


def decode_utf8(data: bytes, pending: bytes = b"") -> tuple[list[int], bytes]:
    """Decode `data` after the incomplete prefix `pending` like a standard decoder with replacement
    (each maximal invalid subpart becomes U+FFFD, as `bytes.decode("utf-8", "replace")` does).

    Returns the code points completed and the prefix still pending at the end.
    """
    out: list[int] = []
    buffer = bytearray(pending)
    i = 0
    while i < len(data):
        byte = data[i]
        if buffer:
            lo, hi = _next_byte_range(bytes(buffer))
            if lo <= byte <= hi:
                buffer.append(byte)
                i += 1
                if len(buffer) == _sequence_length(buffer[0]):
                    out.append(ord(bytes(buffer).decode("utf-8")))
                    buffer.clear()
            else:  # the prefix is cut short: one U+FFFD, then this byte starts afresh
                out.append(0xFFFD)
                buffer.clear()
            continue
        length = _sequence_length(byte)
        if length == 1:
            out.append(byte)
        elif length:
            buffer.append(byte)
        else:
            out.append(0xFFFD)
        i += 1
    return out, bytes(buffer)


def _pending_at_end(tail: bytes) -> bytes:
    """The pending prefix after a byte stream, from its last <= 3 bytes alone.

    UTF-8 resynchronises: a pending prefix is at most 3 bytes and starts with a non-continuation
    byte, which a decoder always processes from a clean state. So decoding from the last such byte
    of the tail gives the same pending prefix as decoding the whole stream.
    """
    for i in range(len(tail) - 1, -1, -1):
        if not 0x80 <= tail[i] <= 0xBF:
            return decode_utf8(tail[i:])[1]
    return b""


# ==================================================================================================
# Token bytes
# ==================================================================================================


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character table used by byte-level BPE vocabularies."""
    visible = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars = visible[:]
    extra = 0
    for byte in range(256):
        if byte not in visible:
            visible.append(byte)
            chars.append(256 + extra)
            extra += 1
    return {byte: chr(char) for byte, char in zip(visible, chars)}


_BYTE_DECODER = {char: byte for byte, char in _bytes_to_unicode().items()}
_BYTE_FALLBACK = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")


def _is_byte_level(tokenizer) -> bool:
    """True for byte-level BPE (GPT-2, Llama-3, Qwen, BART): tokens are byte strings in GPT-2's alphabet.

    Read from the decoder; a vocabulary holding all 256 byte characters of GPT-2's alphabet as tokens is
    byte-level too. A wrong "no" would silently let byte fragments of forbidden characters through, so an
    unreadable decoder is not taken as a "no": it falls to the vocabulary check."""
    if getattr(tokenizer, "byte_decoder", None):  # slow GPT-2-style tokenizers
        return True
    backend = getattr(tokenizer, "backend_tokenizer", None) or getattr(tokenizer, "_tokenizer", None)
    decoder = getattr(backend, "decoder", None)
    if decoder is not None:
        try:
            state = decoder.__getstate__()
            text = state.decode() if isinstance(state, bytes) else json.dumps(state)
        except (AttributeError, TypeError, UnicodeDecodeError):  # an unknown decoder object: ask the vocabulary
            text = ""
        if '"ByteLevel"' in text:
            return True
    vocab = tokenizer.get_vocab()
    return all(char in vocab for char in _BYTE_DECODER)


def token_bytes(tokenizer) -> list[bytes]:
    """The bytes each token id contributes to decoded text (special tokens: none).

    Byte-level BPE: the token string through GPT-2's byte table. SentencePiece byte fallback
    (`<0xE4>`): that byte. Anything else: the token decoded on its own, as UTF-8.
    """
    size = len(tokenizer)
    strings = tokenizer.convert_ids_to_tokens(list(range(size)))
    added = {i: t for i, t in getattr(tokenizer, "added_tokens_decoder", {}).items() if i < size}
    special_ids = set(tokenizer.all_special_ids) | {i for i, t in added.items() if getattr(t, "special", False)}
    byte_level = _is_byte_level(tokenizer)
    result: list[bytes] = []
    for i, text in enumerate(strings):
        if i in special_ids or text is None:
            result.append(b"")
        elif i in added:
            result.append(str(added[i].content if hasattr(added[i], "content") else added[i]).encode("utf-8"))
        elif byte_level and all(char in _BYTE_DECODER for char in text):
            result.append(bytes(_BYTE_DECODER[char] for char in text))
        elif match := _BYTE_FALLBACK.match(text):
            result.append(bytes([int(match.group(1), 16)]))
        else:
            result.append(tokenizer.decode([i], skip_special_tokens=True, clean_up_tokenization_spaces=False).encode("utf-8"))
    return result


# ==================================================================================================
# The suppressor
# ==================================================================================================


def _canonical_scripts(scripts: Sequence[str] | None) -> tuple[str, ...]:
    foreign_script_pattern(scripts)  # validates the names (DialsumError for an unknown script)
    if scripts is None:
        from dialsum.config import DEFAULT_FORBIDDEN_SCRIPTS

        scripts = DEFAULT_FORBIDDEN_SCRIPTS
    lookup = {name.lower(): name for name in SCRIPT_RANGES}
    return tuple(sorted({lookup[str(s).strip().lower()] for s in scripts}))


class _ScriptSet:
    """Forbidden code points as merged, sorted intervals."""

    def __init__(self, scripts: tuple[str, ...]):
        ranges = sorted(r for name in scripts for r in SCRIPT_RANGES[name])
        merged: list[list[int]] = []
        for lo, hi in ranges:
            if merged and lo <= merged[-1][1] + 1:
                merged[-1][1] = max(merged[-1][1], hi)
            else:
                merged.append([lo, hi])
        self.starts = [lo for lo, _ in merged]
        self.ends = [hi for _, hi in merged]
        self.np_starts = np.array(self.starts or [1], dtype=np.int64)
        self.np_ends = np.array(self.ends or [0], dtype=np.int64)

    def contains(self, code_point: int) -> bool:
        i = bisect_right(self.starts, code_point) - 1
        return i >= 0 and code_point <= self.ends[i]

    def covers(self, lo: int, hi: int) -> bool:
        """Every code point in [lo, hi] is forbidden."""
        i = bisect_right(self.starts, lo) - 1
        return i >= 0 and hi <= self.ends[i]

    def contains_array(self, code_points: np.ndarray) -> np.ndarray:
        i = np.searchsorted(self.np_starts, code_points, side="right") - 1
        return (i >= 0) & (code_points <= self.np_ends[np.maximum(i, 0)])


def _breaks_rule(forbidden: _ScriptSet, data: bytes, pending: bytes = b"") -> bool:
    """The one rule: decoding `data` after `pending` completes a forbidden character or a broken one
    (U+FFFD), or leaves a prefix that can only become a forbidden character."""
    code_points, left = decode_utf8(data, pending)
    if any(cp == REPLACEMENT or forbidden.contains(cp) for cp in code_points):
        return True
    return bool(left) and forbidden.covers(*_prefix_code_points(left))


class _SuppressionTable:
    """Per tokenizer and script set: token bytes, the static ban mask, and lazily the mask for each
    pending prefix (at most ~22k distinct prefixes exist; in practice a few hundred occur)."""

    MAX_HOST_MASKS = 2048
    MAX_DEVICE_MASKS = 512

    def __init__(self, tokenizer, scripts: tuple[str, ...]):
        self.scripts = scripts
        self.forbidden = _ScriptSet(scripts)
        self.token_bytes = token_bytes(tokenizer)
        size = len(self.token_bytes)
        self.size = size
        self.lengths = np.array([len(b) for b in self.token_bytes], dtype=np.int64)
        first = np.full((size, 3), -1, dtype=np.int64)
        for i, data in enumerate(self.token_bytes):
            for k, byte in enumerate(data[:3]):
                first[i, k] = byte
        self.first = first
        # bad_from[t, k]: the token's bytes from offset k, decoded from a clean state, are bad.
        # Offsets k > 0 matter only for tokens that start with continuation bytes.
        self.bad_from = np.zeros((size, 4), dtype=bool)
        pattern = foreign_script_pattern(list(scripts)) if scripts else None
        for i, data in enumerate(self.token_bytes):
            if not data:
                continue
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError:
                self.bad_from[i, 0] = self._bad_bytes(data)
            else:
                self.bad_from[i, 0] = pattern is not None and pattern.search(text) is not None
            if 0x80 <= data[0] <= 0xBF:
                for k in range(1, 4):
                    self.bad_from[i, k] = self._bad_bytes(data[k:])
        self.static_bad = self.bad_from[:, 0].copy()
        # Bounded caches: ~22k prefixes exist (most of them 4-byte ones nobody generates); a mask is
        # one byte per token, so at 128k tokens 2048 host masks are <= 256 MB, 512 device ones 64 MB.
        self._state_masks: OrderedDict[bytes, np.ndarray] = OrderedDict()
        self._tensors: OrderedDict[tuple, torch.Tensor] = OrderedDict()
        self._tail_cache: dict[bytes, bytes] = {}

    def _bad_bytes(self, data: bytes, pending: bytes = b"") -> bool:
        """Decoding `data` after `pending` completes a forbidden character, or leaves a prefix that
        can only become one."""
        return _breaks_rule(self.forbidden, data, pending)

    def state_mask(self, pending: bytes) -> np.ndarray:
        """Tokens banned while the generated text ends in the incomplete prefix `pending` (vectorised)."""
        cached = self._state_masks.get(pending)
        if cached is not None:
            self._state_masks.move_to_end(pending)
            return cached
        length = _sequence_length(pending[0])
        need = length - len(pending)
        lo, hi = _next_byte_range(pending)
        first = self.first
        valid = [(first[:, 0] >= lo) & (first[:, 0] <= hi)] + [(first[:, k] >= 0x80) & (first[:, k] <= 0xBF) for k in (1, 2)]
        consumed = np.zeros(self.size, dtype=np.int64)  # leading bytes that validly continue the prefix
        run = np.ones(self.size, dtype=bool)
        for k in range(need):
            run &= valid[k]
            consumed += run
        complete = consumed == need

        # 1. the token completes the character: it must be allowed, and the rest of the token too
        code_point = (pending[0] & (0xFF >> (length + 1))) << (6 * (length - 1))
        for k, byte in enumerate(pending[1:], start=1):
            code_point |= (byte & 0x3F) << (6 * (length - 1 - k))
        code_points = np.full(self.size, code_point, dtype=np.int64)
        for k in range(need):
            code_points |= (first[:, k] & 0x3F) << (6 * (need - 1 - k))
        bad = complete & (self.forbidden.contains_array(code_points) | self.bad_from[:, need])
        # 2. the token breaks the prefix (one U+FFFD) and is then decoded afresh from the breaking byte
        broken = ~complete & (consumed < self.lengths)
        bad |= broken  # a broken character would print as U+FFFD in a Korean summary
        # 3. the token is all continuation bytes and still leaves the character incomplete
        for token in np.nonzero(~complete & (consumed == self.lengths) & (self.lengths > 0))[0]:
            bad[token] = self.forbidden.covers(*_prefix_code_points(pending + self.token_bytes[token]))
        self._state_masks[pending] = bad
        if len(self._state_masks) > self.MAX_HOST_MASKS:
            self._state_masks.popitem(last=False)
        return bad

    def pending_after(self, ids: list[int], complete: bool) -> bytes | None:
        """The pending prefix at the end of the generated text, whose last tokens are `ids`
        (`complete`: they are all the generated tokens). None: too few bytes to tell; pass more ids."""
        tail = b""
        for token in reversed(ids):
            if 0 <= token < self.size:
                tail = self.token_bytes[token] + tail
                if len(tail) >= 3:
                    break
        else:
            if not complete:
                return None
        tail = tail[-3:]
        pending = self._tail_cache.get(tail)
        if pending is None:
            if len(self._tail_cache) > 65536:
                self._tail_cache.clear()
            pending = self._tail_cache[tail] = _pending_at_end(tail)
        return pending

    def tensor(self, key: bytes | None, device: torch.device, width: int, keep: tuple[int, ...]) -> torch.Tensor:
        """The ban mask (static for key None, else for a pending prefix) as a bool tensor of `width`."""
        cache_key = (key, str(device), width, keep)
        found = self._tensors.get(cache_key)
        if found is not None:
            self._tensors.move_to_end(cache_key)
            return found
        mask = self.static_bad if key is None else self.state_mask(key)
        full = np.zeros(width, dtype=bool)
        n = min(width, self.size)
        full[:n] = mask[:n]
        for token in keep:
            if 0 <= token < width:
                full[token] = False
        tensor = torch.from_numpy(full).to(device)
        self._tensors[cache_key] = tensor
        if len(self._tensors) > self.MAX_DEVICE_MASKS:
            self._tensors.popitem(last=False)
        return tensor


_SCRIPT_SETS: dict[tuple[str, ...], _ScriptSet] = {}


def banned_bytes(data: bytes, pending: bytes = b"", scripts: Sequence[str] | None = None) -> bool:
    """The suppressor's rule for one token's bytes `data`, generated after the incomplete prefix
    `pending`: True when they complete a forbidden character, or leave a prefix that can only
    become one. (A lone 0xEA, the start of many Hangul syllables, is allowed; a lone 0xE5 is not.)"""
    key = _canonical_scripts(scripts)
    forbidden = _SCRIPT_SETS.get(key) or _SCRIPT_SETS.setdefault(key, _ScriptSet(key))
    return _breaks_rule(forbidden, data, pending)


_TABLES: "weakref.WeakKeyDictionary[Any, dict]" = weakref.WeakKeyDictionary()
_TABLES_BY_ID: dict[int, tuple[Any, dict]] = {}


def suppression_table(tokenizer, scripts: Sequence[str] | None = None) -> _SuppressionTable:
    """The (cached) suppression table of a tokenizer object for a script set."""
    key = (_canonical_scripts(scripts), len(tokenizer))
    try:
        per_tokenizer = _TABLES.setdefault(tokenizer, {})
    except TypeError:  # not weak-referenceable: keep it alive with its table
        per_tokenizer = _TABLES_BY_ID.setdefault(id(tokenizer), (tokenizer, {}))[1]
    table = per_tokenizer.get(key)
    if table is None:
        table = per_tokenizer[key] = _SuppressionTable(tokenizer, key[0])
    return table


class ForeignScriptSuppressor(LogitsProcessor):
    """Bans tokens that would put a forbidden-script character (Han, kana, Cyrillic, ...) in the output.

    Args:
        tokenizer: the model's tokenizer (byte-level BPE handled byte by byte; see the module docstring).
        scripts: script names from `dialsum.scripts.SCRIPT_RANGES` (default: the config defaults).
        prompt_length: input length before generation (with left padding, the padded width); tokens
            before it are the prompt and never constrain anything. None: taken from the first call,
            so use one instance per `generate()` call.
        keep_token_ids: ids never banned; EOS and pad of the tokenizer are always added.
    """

    def __init__(self, tokenizer, scripts: Sequence[str] | None = None, prompt_length: int | None = None,
                 keep_token_ids: Sequence[int] = ()):
        self.table = suppression_table(tokenizer, scripts)
        self.prompt_length = prompt_length
        keep = set(int(i) for i in keep_token_ids)
        for token in (tokenizer.eos_token_id, tokenizer.pad_token_id):
            if token is not None:
                keep.add(int(token))
        self.keep = tuple(sorted(keep))

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.prompt_length is None:
            self.prompt_length = input_ids.shape[1]
        table, width, device = self.table, scores.shape[-1], scores.device
        static = table.tensor(None, device, width, self.keep)
        generated = input_ids.shape[1] - self.prompt_length
        if generated <= 0:
            return scores.masked_fill(static, -math.inf)
        window = min(generated, 3)
        rows: list[torch.Tensor] = []
        any_pending = False
        for row, ids in enumerate(input_ids[:, -window:].tolist()):
            pending = table.pending_after(ids, complete=window == generated)
            if pending is None:  # zero-byte (special) tokens in the window: look further back
                pending = table.pending_after(input_ids[row, self.prompt_length :].tolist(), complete=True)
            if pending:
                any_pending = True
                rows.append(table.tensor(pending, device, width, self.keep))
            else:
                rows.append(static)
        if not any_pending:
            return scores.masked_fill(static, -math.inf)
        return scores.masked_fill(torch.stack(rows), -math.inf)


# ==================================================================================================
# Post-processing
# ==================================================================================================

_THINK = re.compile(r"^\s*<think>.*?</think>", re.DOTALL)
_ROLE_HEADERS = [
    re.compile(r"^\s*<\|start_header_id\|>\s*assistant\s*<\|end_header_id\|>", re.IGNORECASE),
    re.compile(r"^\s*<\|im_start\|>\s*assistant\b", re.IGNORECASE),
    re.compile(r"^\s*<start_of_turn>\s*model\b", re.IGNORECASE),
    re.compile(r"^\s*#{2,}\s*assistant\s*:", re.IGNORECASE),
]
# A bare role name on its own line: what a header leaves once its special tokens are stripped.
_BARE_ROLE = re.compile(r"^\s*assistant[ \t]*(?:\n|$)", re.IGNORECASE)
_LABEL = re.compile(
    r"^\s*(?:\[\s*(?:요약|summary)\s*\]|【\s*요약\s*】|\**\s*(?:대화\s*)?(?:요약|summary)\s*\**\s*[:：]\**)\s*",
    re.IGNORECASE,
)


def clean_summary(text: str, tokenizer=None, end_token: str | None = None) -> str:
    """A generated summary as one clean line: special tokens, role headers ("assistant\\n\\n",
    "<|start_header_id|>assistant<|end_header_id|>"), an empty <think> block and leading labels
    ("요약:", "Summary:", "[요약]") removed, a character left broken by a stop mid-sequence (U+FFFD)
    dropped, whitespace collapsed. Empty stays empty. `end_token` (the turn closer, `encode.end_of_turn_token`)
    ends the summary: nothing after it is kept."""
    text = (text or "").replace("\ufffd", "")
    if end_token:
        text = text.split(end_token, 1)[0]
    for _ in range(4):  # headers and labels can stack ("assistant\n\n요약: ...")
        before = text
        text = _THINK.sub("", text)
        for pattern in _ROLE_HEADERS:
            text = pattern.sub("", text)
        if tokenizer is not None:
            for token in sorted(set(tokenizer.all_special_tokens), key=len, reverse=True):
                if token:
                    text = text.replace(token, " ")
        text = _BARE_ROLE.sub("", text)
        text = _LABEL.sub("", text)
        if text == before:
            break
    return " ".join(text.split())


def lead_baseline(dialogue: Dialogue) -> str:
    """The first utterance without its speaker tag (`#Person1#` inside the text stays): the LEAD baseline."""
    for turn in dialogue.turns:
        if turn.utterance.strip():
            return " ".join(turn.utterance.split())
    return " ".join(dialogue.preamble.split())


# ==================================================================================================
# Batched generation
# ==================================================================================================


def stop_token_ids(model, tokenizer, kind: str = "causal") -> list[int]:
    """The turn closer first (the token every training label ends with), then EOS and any EOS the
    model's generation config names (Bllossom's says `<|end_of_text|>`, its turns end with `<|eot_id|>`)."""
    ids: list[int] = []

    def add(value):
        for token in value if isinstance(value, (list, tuple)) else [value]:
            if token is not None and int(token) not in ids:
                ids.append(int(token))

    if kind == "causal":
        add(tokenizer.convert_tokens_to_ids(end_of_turn_token(tokenizer)))
    add(tokenizer.eos_token_id)
    generation_config = getattr(model, "generation_config", None)
    if generation_config is not None:
        add(generation_config.eos_token_id)
    if not ids:
        raise DialsumError("the tokenizer has no EOS token and the model's generation config names none")
    return ids


# Decoding knobs a checkpoint's generation_config.json may set that dialsum's generation section decides
# instead; the ids that describe the model's structure (decoder start, BOS) are kept from the checkpoint.
_STRUCTURAL_KEYS = ("decoder_start_token_id", "bos_token_id")


def _generation_kwargs(config: Config) -> dict[str, Any]:
    """Our config is the whole truth: every decoding knob is set, so a model's generation_config.json
    (sampling defaults, BART's min_length / num_beams=4) cannot change what the config says."""
    g = config.generation
    kwargs: dict[str, Any] = dict(
        max_new_tokens=token_budget(g),
        min_length=0,
        num_beams=g.num_beams,
        do_sample=g.do_sample,
        repetition_penalty=g.repetition_penalty,
        use_cache=True,
    )
    if g.num_beams > 1:
        kwargs.update(length_penalty=g.length_penalty, early_stopping=True)
    if g.do_sample:
        kwargs.update(temperature=g.temperature, top_p=g.top_p, top_k=0)
    return kwargs


_REPORTED_IGNORED: "weakref.WeakSet[Any]" = weakref.WeakSet()  # said once per loaded model


def effective_generation_config(model, config: Config, stops: list[int], pad_id: int):
    """The GenerationConfig generation really runs with, and what of the checkpoint's generation_config.json
    it ignores ({key: checkpoint value}) — said, never silently applied: Bllossom's `do_sample: true,
    temperature: 0.6`, Qwen's `repetition_penalty: 1.1`, KoBART's `forced_eos_token_id`.

    Built from scratch (not merged into the checkpoint's), because `generate()` fills every unset field
    from the model's own generation config."""
    from transformers import GenerationConfig

    own = getattr(model, "generation_config", None)
    structural = {key: getattr(own, key, None) for key in _STRUCTURAL_KEYS if getattr(own, key, None) is not None}
    effective = GenerationConfig(**_generation_kwargs(config), eos_token_id=list(stops), pad_token_id=pad_id,
                                 **structural)
    ignored: dict[str, Any] = {}
    if own is not None:
        defaults = GenerationConfig().to_dict()
        mine = effective.to_dict()
        for key, value in own.to_diff_dict().items():
            if key.startswith("_") or key in _STRUCTURAL_KEYS or key == "transformers_version":
                continue
            if key == "eos_token_id":
                continue  # its ids are stop tokens (stop_token_ids)
            if value != mine.get(key, defaults.get(key)):
                ignored[key] = value
    return effective, ignored


def describe_generation(effective, ignored: dict[str, Any]) -> dict[str, Any]:
    """What generation.json holds: the settings used, and the checkpoint's settings that were not."""
    keys = ("max_new_tokens", "num_beams", "do_sample", "temperature", "top_p", "top_k", "repetition_penalty",
            "length_penalty", "eos_token_id", "pad_token_id", "decoder_start_token_id", "bos_token_id")
    used = {key: getattr(effective, key, None) for key in keys}
    if not effective.do_sample:
        for key in ("temperature", "top_p", "top_k"):
            used.pop(key)
    return {"used": used, "ignored_from_checkpoint": ignored}


class NoRepeatNGramExceptTags(LogitsProcessor):
    """`no_repeat_ngram_size` that never forbids an n-gram holding a speaker or mask tag token.

    A summary says "#Person1#은 ... #Person1#은 ..." in most references; with `#Person1#` one token (koBART)
    plain no_repeat_ngram_size=2 makes those references impossible to generate. Only the generated tokens
    (after `prompt_length`) count, as in transformers' own processor for decoder-only models."""

    def __init__(self, size: int, exempt_ids: Sequence[int], prompt_length: int = 0):
        self.size = size
        self.exempt = set(int(i) for i in exempt_ids)
        self.prompt_length = prompt_length

    def banned(self, tokens: list[int]) -> set[int]:
        n = self.size
        if len(tokens) + 1 < n:
            return set()
        prefix = tuple(tokens[len(tokens) - n + 1:]) if n > 1 else ()
        if self.exempt.intersection(prefix):
            return set()
        found = set()
        for i in range(len(tokens) - n + 1):
            if tuple(tokens[i:i + n - 1]) == prefix and tokens[i + n - 1] not in self.exempt:
                found.add(tokens[i + n - 1])
        return found

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        for row, ids in enumerate(input_ids[:, self.prompt_length:].tolist()):
            banned = self.banned(ids)
            if banned:
                scores[row, list(banned)] = -math.inf
        return scores


def tag_token_ids(tokenizer) -> list[int]:
    """Ids of speaker and mask tags ('#Person1#', '#PhoneNumber#') that are one token each (koBART after
    training adds them). A tag written in several BPE pieces has no id of its own: exempting its pieces
    ('#', '1') would exempt ordinary text, so those are not exempt (the causal presets set no n-gram ban)."""
    from dialsum.encode import MASK_TOKEN_PATTERN

    vocab = tokenizer.get_vocab()
    return sorted(i for token, i in vocab.items() if re.fullmatch(MASK_TOKEN_PATTERN, token))


def _cut_at_stop(ids: list[int], stops: set[int]) -> list[int]:
    for i, token in enumerate(ids):
        if token in stops:
            return ids[:i]
    return ids


def generate_summaries(
    model,
    tokenizer,
    dialogues: Sequence[Dialogue],
    config: Config,
    *,
    kind: Literal["causal", "seq2seq"] | None = None,
    progress: bool = True,
    info: dict | None = None,
    cleanup_counts: dict[str, int] | None = None,
    num_return_sequences: int = 1,
    max_new_tokens: Sequence[int] | None = None,
) -> list[str]:
    """One summary per dialogue, in input order (an empty generation is an empty string).

    `num_return_sequences` n > 1: n candidates per dialogue (beams or samples), flat, dialogue i's at
    [i*n, (i+1)*n) (`generate_candidates` groups them). `max_new_tokens`: a token limit per dialogue
    (length control, dialsum.length); a batch generates to its largest and each row is cut to its own.

    Decoder-only: prompts from `encode_prompt` (token for token what training used), left-padded;
    seq2seq: the encoder source trimmed like training. Examples are batched by length (longest
    first, so memory problems show up at once) and restored to input order. Dialogues trimmed to fit
    are counted and said; `info`, when given, receives the trimming counts and the generation settings
    (`describe_generation`).
    """
    from tqdm.auto import tqdm
    from transformers import LogitsProcessorList

    kind = kind or config.model.kind
    g = config.generation
    inputs, trim = encode_inference_inputs(tokenizer, list(dialogues), config, kind)
    if trim.trimmed:
        print(f"inference: {trim.trimmed} of {trim.total} dialogues trimmed to fit training.max_length="
              f"{config.training.max_length} ({trim.turns_cut} turns cut from their ends, as in training)",
              file=sys.stderr)
    stops = stop_token_ids(model, tokenizer, kind)
    closer = tokenizer.convert_ids_to_tokens(stops[0]) if kind == "causal" else None
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stops[0]
    effective, ignored = effective_generation_config(
        model.get_base_model() if hasattr(model, "get_base_model") else model, config, stops, pad_id)
    if ignored and model not in _REPORTED_IGNORED:
        _REPORTED_IGNORED.add(model)
        print(f"generation: the checkpoint's generation_config.json settings {ignored} are ignored; the config's "
              f"generation section decides", file=sys.stderr)
    tag_ids = tag_token_ids(tokenizer) if g.no_repeat_ngram_size else []
    if info is not None:
        described = describe_generation(effective, ignored)
        described["used"].update(  # dialsum's own logits processors
            no_repeat_ngram_size=g.no_repeat_ngram_size, no_repeat_exempt_tag_tokens=len(tag_ids),
            forbidden_scripts=g.forbidden_scripts if g.suppress_foreign_scripts else [],
        )
        info.update(trimmed=trim.trimmed, turns_cut=trim.turns_cut, generation=described)
    order = sorted(range(len(inputs)), key=lambda i: len(inputs[i]), reverse=True)
    per_input = num_return_sequences
    results: list[str] = [""] * (len(inputs) * per_input)
    limits = _token_limits(tokenizer, dialogues, config, max_new_tokens)
    device = next(model.parameters()).device
    was_training = model.training
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model  # PEFT: the model generate() reads
    own_generation_config = getattr(inner, "generation_config", None)
    model.eval()
    bar = tqdm(total=len(inputs), desc="generate", unit="dlg", disable=not progress, file=sys.stderr)
    try:
        inner.generation_config = effective  # generate() fills unset fields from it: nothing else may leak in
        with torch.inference_mode():
            for start in range(0, len(order), g.batch_size):
                batch = order[start : start + g.batch_size]
                width = max(len(inputs[i]) for i in batch)
                ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
                mask = torch.zeros((len(batch), width), dtype=torch.long)
                for row, i in enumerate(batch):
                    n = len(inputs[i])
                    if kind == "causal":  # left padding: every prompt ends where generation starts
                        ids[row, width - n :] = torch.tensor(inputs[i])
                        mask[row, width - n :] = 1
                    else:
                        ids[row, :n] = torch.tensor(inputs[i])
                        mask[row, :n] = 1
                processors = LogitsProcessorList()
                if g.no_repeat_ngram_size:
                    processors.append(NoRepeatNGramExceptTags(
                        g.no_repeat_ngram_size, tag_ids, prompt_length=width if kind == "causal" else 0))
                if g.suppress_foreign_scripts and g.forbidden_scripts:
                    processors.append(
                        ForeignScriptSuppressor(
                            tokenizer, g.forbidden_scripts,
                            prompt_length=width if kind == "causal" else None,  # seq2seq: the decoder start
                            keep_token_ids=stops + [pad_id],
                        )
                    )
                per_batch = {"max_new_tokens": max(limits[i] for i in batch)} if limits is not None else {}
                output = model.generate(
                    input_ids=ids.to(device), attention_mask=mask.to(device), generation_config=effective,
                    logits_processor=processors, num_return_sequences=per_input, **per_batch,
                )
                skip = width if kind == "causal" else 1  # the prompt, or the decoder start token
                stop_set = set(stops)
                for row, (i, c) in enumerate((i, c) for i in batch for c in range(per_input)):
                    generated = _cut_at_stop(output[row, skip:].tolist(), stop_set)
                    if limits is not None:
                        generated = generated[: limits[i]]
                    text = tokenizer.decode(generated, skip_special_tokens=True, clean_up_tokenization_spaces=False)
                    results[i * per_input + c] = clean_summary(text, tokenizer, end_token=closer)
                bar.update(len(batch))
    finally:
        bar.close()
        inner.generation_config = own_generation_config
        if was_training:
            model.train()
    return _cleanup(results, config, cleanup_counts)


def _token_limits(tokenizer, dialogues, config: Config, given: Sequence[int] | None) -> list[int] | None:
    """Per-dialogue token limits: given, or from the length rule when generation.max_new_tokens is 'auto'."""
    if given is not None:
        if len(given) != len(dialogues):
            raise ValueError(f"max_new_tokens: {len(given)} limits for {len(dialogues)} dialogues")
        return [int(x) for x in given]
    if config.generation.max_new_tokens != "auto":
        return None
    from dialsum.length import limits_for

    return limits_for(config, tokenizer, dialogues)


def _check_candidates(config: Config, n: int) -> None:
    g = config.generation
    if n > 1 and not g.do_sample and g.num_beams < n:
        raise ConfigError(f"--num-candidates {n} needs generation.do_sample=true or generation.num_beams >= {n} "
                          f"(now num_beams={g.num_beams}, do_sample=false): greedy decoding has one candidate")


def generate_candidates(
    model, tokenizer, dialogues: Sequence[Dialogue], config: Config, n: int, **kwargs
) -> list[list[str]]:
    """n candidates per dialogue (the n best beams, or n samples with generation.do_sample), in input order."""
    _check_candidates(config, n)
    flat = generate_summaries(model, tokenizer, dialogues, config, num_return_sequences=n, **kwargs)
    return [flat[i * n : (i + 1) * n] for i in range(len(dialogues))]


def _cleanup(summaries: list[str], config: Config, counts: dict[str, int] | None) -> list[str]:
    """The config's clean-up steps (dialsum.cleanup); what each changed is added to `counts` when given."""
    from dialsum.cleanup import clean_all

    cleaned, changed = clean_all(summaries, config, config.generation.forbidden_scripts)
    if counts is not None:
        for step, n in changed.items():
            counts[step] = counts.get(step, 0) + n
    return cleaned


# ==================================================================================================
# Loading a run for inference
# ==================================================================================================


@dataclass
class InferenceSource:
    """Where the weights and the tokenizer of a model to generate with come from."""

    config: Config
    model_dir: Path | str  # full model weights, or the adapter directory
    adapter: bool  # model_dir holds a PEFT adapter on config.model.name_or_path
    run_dir: Path | None = None


def checkpoint_kind(model_path: str | Path, config: Config | None = None) -> str:
    """'seq2seq' when the checkpoint's config.json says is_encoder_decoder, else 'causal'."""
    from transformers import AutoConfig

    from dialsum.models import resolve_model_path

    trust = config.model.trust_remote_code if config else False
    try:
        model_config = AutoConfig.from_pretrained(resolve_model_path(model_path), trust_remote_code=trust)
    except (OSError, ValueError) as error:
        raise ConfigError(f"{model_path}: cannot read the model's config.json: {str(error).splitlines()[0]}") from None
    return "seq2seq" if getattr(model_config, "is_encoder_decoder", False) else "causal"


def resolve_inference_source(model_path: str | Path, config: Config | None = None, overrides: list[str] | None = None) -> InferenceSource:
    """A run directory (config.yaml + model/), a run's model/ directory, or any HF model path / hub id.

    For a run, the config is the run's config.yaml; a `config` given as well supplies everything but the
    `model` and `prompt` sections, which stay the run's (the prompt must be the one trained on). For
    anything else, `config` (default: the defaults) with `model.name_or_path` set to the path and
    `model.kind` read from the checkpoint (`is_encoder_decoder`). `overrides` (`key=value`) apply on top.
    """
    path = Path(model_path)
    run_dir: Path | None = None
    if (path / CONFIG_FILE).is_file():
        run_dir = path
        model_dir: Path | str = path / MODEL_DIR
        if not model_dir.is_dir():
            raise RunDirError(
                f"{path}: run directory has no {MODEL_DIR}/ (training did not finish); "
                f"generate from a checkpoint with --config {path / CONFIG_FILE} and the checkpoint path"
            )
    elif path.name == MODEL_DIR and (path.parent / CONFIG_FILE).is_file():
        run_dir, model_dir = path.parent, path
    else:
        model_dir = str(model_path)
    if run_dir is not None:
        run_config = load_config(run_dir / CONFIG_FILE)
        if config is None:
            config = run_config
        else:
            raw = config.to_dict()
            raw["model"], raw["prompt"] = run_config.to_dict()["model"], run_config.to_dict()["prompt"]
            config = config_from_dict(raw, source=str(run_dir / CONFIG_FILE))
    adapter = (Path(model_dir) / ADAPTER_CONFIG).is_file()  # on the base model config.model.name_or_path
    if run_dir is None:
        raw = config.to_dict() if config is not None else {"model": {}}
        if not adapter:  # a bare checkpoint: it names itself, and its config.json says its kind
            kind = checkpoint_kind(model_dir, config)
            if config is not None and config.model.kind != kind:
                print(f"{model_path}: the checkpoint is {kind} (config.json), not model.kind={config.model.kind}; "
                      f"using {kind}", file=sys.stderr)
            raw["model"] = {**raw.get("model", {}), "name_or_path": str(model_dir), "kind": kind}
        elif config is None:
            raise ConfigError(f"{model_path}: a LoRA adapter outside a run directory needs --config naming its "
                              "base model")
        config = config_from_dict(raw, source=str(model_path))
    if overrides:
        config = config_from_dict(config.to_dict(), overrides, source="--set")
    return InferenceSource(config=config, model_dir=Path(model_dir) if adapter else model_dir, adapter=adapter, run_dir=run_dir)


def _load_source(source: InferenceSource):
    from dialsum.models import has_cuda, load_model, load_tokenizer

    config = source.config
    tokenizer = load_tokenizer(source.model_dir, config)
    if source.adapter:
        from peft import PeftModel

        base = load_model(config.model.name_or_path, config)
        if len(tokenizer) > base.get_input_embeddings().num_embeddings:  # training added a pad token
            base.resize_token_embeddings(len(tokenizer))
        model = PeftModel.from_pretrained(base, str(source.model_dir)).merge_and_unload()
    else:
        model = load_model(source.model_dir, config)
    if config.model.kind == "causal":
        tokenizer.padding_side = "left"
    if has_cuda():
        model.to("cuda")
    model.eval()
    return model, tokenizer


def load_for_inference(model_path: str | Path, config: Config | None = None):
    """(model, tokenizer, config) ready to generate: adapter merged, eval mode, left padding for causal."""
    source = resolve_inference_source(model_path, config)
    model, tokenizer = _load_source(source)
    return model, tokenizer, source.config


# ==================================================================================================
# vLLM (decoder-only, CUDA)
# ==================================================================================================


def _generate_vllm(source: InferenceSource, dialogues: Sequence[Dialogue], progress: bool = True) -> list[str]:
    """vLLM backend: same prompt ids, same stop tokens. Suppression here is the static mask only
    (`allowed_token_ids`); the per-step byte-fragment check needs the HF backend."""
    config, g = source.config, source.config.generation
    if config.model.kind != "causal":
        raise ConfigError("generation.backend=vllm supports decoder-only models only; use generation.backend=hf for seq2seq")
    if g.num_beams > 1 or g.no_repeat_ngram_size:
        raise ConfigError("generation.num_beams > 1 and no_repeat_ngram_size need generation.backend=hf")
    try:
        from vllm import LLM, SamplingParams
        from vllm.lora.request import LoRARequest
    except ImportError:
        raise DialsumError("generation.backend=vllm needs vLLM, which is not installed: pip install 'dialsum[vllm]'") from None
    from dialsum.models import has_cuda, load_tokenizer, resolve_model_path

    if not has_cuda():
        raise DialsumError("generation.backend=vllm needs a CUDA GPU; none is available (use generation.backend=hf)")

    if g.max_new_tokens == "auto":
        raise ConfigError("generation.max_new_tokens=auto (per-dialogue limits) needs generation.backend=hf")
    tokenizer = load_tokenizer(source.model_dir, config)
    prompts = [{"prompt_token_ids": encode_prompt(tokenizer, d, config)} for d in dialogues]
    closer = end_of_turn_token(tokenizer)
    stops = [tokenizer.convert_tokens_to_ids(closer), tokenizer.eos_token_id]
    stops = sorted({int(t) for t in stops if t is not None})
    allowed = None
    if g.suppress_foreign_scripts and g.forbidden_scripts:
        print("generation.backend=vllm: foreign-script suppression is the static mask only (allowed_token_ids); "
              "byte fragments that combine into a forbidden character can pass (generation.backend=hf checks them)",
              file=sys.stderr)
        table = suppression_table(tokenizer, g.forbidden_scripts)
        special = set(tokenizer.all_special_ids) - set(stops)
        allowed = [i for i in range(table.size) if not table.static_bad[i] and i not in special]
    params = SamplingParams(
        max_tokens=g.max_new_tokens,
        temperature=g.temperature if g.do_sample else 0.0,
        top_p=g.top_p if g.do_sample else 1.0,
        repetition_penalty=g.repetition_penalty,
        stop_token_ids=stops,
        skip_special_tokens=True,
        seed=config.training.seed,
        allowed_token_ids=allowed,
    )
    llm_kwargs: dict[str, Any] = dict(
        model=str(resolve_model_path(config.model.name_or_path) if source.adapter else source.model_dir),
        tokenizer=str(source.model_dir),
        dtype=config.model.dtype,
        max_model_len=config.training.max_length,
        trust_remote_code=config.model.trust_remote_code,
        seed=config.training.seed,
    )
    lora = None
    if source.adapter:
        rank = json.loads((Path(source.model_dir) / ADAPTER_CONFIG).read_text(encoding="utf-8")).get("r", 16)
        llm_kwargs.update(enable_lora=True, max_lora_rank=max(8, 1 << (int(rank) - 1).bit_length()))
        lora = LoRARequest("dialsum", 1, str(source.model_dir))
    llm = LLM(**llm_kwargs)
    outputs = llm.generate(prompts, params, lora_request=lora, use_tqdm=progress)
    return _cleanup([clean_summary(output.outputs[0].text, tokenizer, end_token=closer) for output in outputs], config,
                    None)


# ==================================================================================================
# predict
# ==================================================================================================


def _predict_candidates(source: InferenceSource, dialogues: Sequence[Dialogue], output_path: str | Path, n: int,
                        progress: bool) -> dict[str, Any]:
    from transformers import set_seed

    from dialsum.ensemble import write_candidates

    config = source.config
    if config.generation.backend != "hf":
        raise ConfigError("--num-candidates needs generation.backend=hf")
    _check_candidates(config, n)  # before the model loads
    model, tokenizer = _load_source(source)
    set_seed(config.training.seed)  # sampled candidates are reproducible
    candidates = generate_candidates(model, tokenizer, dialogues, config, n, progress=progress)
    write_candidates(output_path, [d.id for d in dialogues], candidates)
    distinct = sum(len(set(c)) for c in candidates) / max(len(candidates), 1)
    print(f"wrote {n} candidates for each of {len(dialogues)} dialogues to {output_path} "
          f"({distinct:.1f} distinct per dialogue on average)")
    return {"n": len(dialogues), "candidates": n, "distinct_per_dialogue": distinct, "output": str(output_path)}


def predict(
    model_path: str | Path,
    data_path: str | Path,
    output_path: str | Path,
    config: Config | None = None,
    overrides: list[str] | None = None,
    progress: bool = True,
    num_candidates: int = 1,
) -> dict[str, Any]:
    """Summarise every dialogue of `data_path` into a `fname,summary` CSV at `output_path` (input ids,
    input order; an empty generation is an empty summary), or, for a DCS input and a .json/.jsonl output,
    into the input records with `output` filled in. Returns {n, empty, foreign, seconds, ...}."""
    from dialsum.submission import check_output_path, is_dcs, write_dcs_submission

    started = time.perf_counter()
    check_output_path(data_path, output_path)  # a DCS .json/.jsonl output needs a DCS input of that extension
    source = resolve_inference_source(model_path, config, overrides)
    dialogues = load_dialogues(data_path)  # bad data fails before the model loads
    source.config, note = resolve_topic_policy(source.config, dialogues)  # a run's config is resolved already
    config = source.config
    for line in (note, topic_mismatch(config.prompt, dialogues, str(data_path))):
        if line:
            print(f"prompt: {line}", file=sys.stderr)
    if num_candidates > 1:  # fname,candidate,summary rows for `dialsum ensemble`
        return _predict_candidates(source, dialogues, output_path, num_candidates, progress)
    cleanup: dict[str, int] = {}  # summaries each clean-up step changed
    info: dict[str, Any] = {}
    if config.generation.backend == "vllm":
        generate_started = time.perf_counter()
        summaries = _generate_vllm(source, dialogues, progress=progress)
    else:
        model, tokenizer = _load_source(source)
        generate_started = time.perf_counter()
        summaries = generate_summaries(model, tokenizer, dialogues, config, kind=config.model.kind, progress=progress,
                                       info=info, cleanup_counts=cleanup)
    generate_seconds = time.perf_counter() - generate_started
    if is_dcs(output_path):  # the DCS input written back, `output` filled in
        write_dcs_submission(data_path, output_path, summaries)
    else:
        write_predictions(output_path, [d.id for d in dialogues], summaries)
    scripts = config.generation.forbidden_scripts
    stats = {
        "n": len(summaries),
        "empty": sum(1 for s in summaries if not s.strip()),
        "foreign": sum(1 for s in summaries if scripts and has_foreign_script(s, scripts)),
        "seconds": round(time.perf_counter() - started, 2),
        "generate_seconds": round(generate_seconds, 2),
        "output": str(output_path),
        "trimmed": info.get("trimmed", 0),
        "generation": info.get("generation"),
        "cleanup": cleanup,
    }
    if any(cleanup.values()):
        print("clean-up changed: " + ", ".join(f"{step} {n}" for step, n in cleanup.items() if n))
    print(
        f"wrote {stats['n']} summaries to {output_path} ({stats['empty']} empty, {stats['foreign']} with a "
        f"foreign script) in {stats['seconds']:.1f}s ({stats['generate_seconds']:.1f}s generating)"
    )
    return stats
