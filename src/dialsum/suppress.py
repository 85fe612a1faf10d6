"""Token bans at generation time: foreign scripts made impossible (not just unlikely), and an n-gram ban
that spares speaker and mask tags.

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
import weakref
from bisect import bisect_right
from collections import OrderedDict
from typing import Any, Sequence

import numpy as np
import torch
from transformers import LogitsProcessor

from dialsum.scripts import SCRIPT_RANGES, foreign_script_pattern, script_key

__all__ = [
    "ForeignScriptSuppressor",
    "NoRepeatNGramExceptTags",
    "banned_bytes",
    "suppression_table",
    "tag_token_ids",
    "token_bytes",
]

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
        return {0xE0: (0xA0, 0xBF), 0xED: (0x80, 0x9F), 0xF0: (0x90, 0xBF), 0xF4: (0x80, 0x8F)}.get(
            pending[0], (0x80, 0xBF)
        )
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
    visible = (
        list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    )
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
            result.append(
                tokenizer.decode([i], skip_special_tokens=True, clean_up_tokenization_spaces=False).encode("utf-8")
            )
    return result


# ==================================================================================================
# The suppressor
# ==================================================================================================


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
        valid = [(first[:, 0] >= lo) & (first[:, 0] <= hi)] + [
            (first[:, k] >= 0x80) & (first[:, k] <= 0xBF) for k in (1, 2)
        ]
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
    key = tuple(sorted(script_key(scripts)))
    forbidden = _SCRIPT_SETS.get(key) or _SCRIPT_SETS.setdefault(key, _ScriptSet(key))
    return _breaks_rule(forbidden, data, pending)


_TABLES: "weakref.WeakKeyDictionary[Any, dict]" = weakref.WeakKeyDictionary()
_TABLES_BY_ID: dict[int, tuple[Any, dict]] = {}


def suppression_table(tokenizer, scripts: Sequence[str] | None = None) -> _SuppressionTable:
    """The (cached) suppression table of a tokenizer object for a script set."""
    key = (tuple(sorted(script_key(scripts))), len(tokenizer))
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

    def __init__(
        self,
        tokenizer,
        scripts: Sequence[str] | None = None,
        prompt_length: int | None = None,
        keep_token_ids: Sequence[int] = (),
    ):
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
# An n-gram ban that spares tags
# ==================================================================================================


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
        prefix = tuple(tokens[len(tokens) - n + 1 :]) if n > 1 else ()
        if self.exempt.intersection(prefix):
            return set()
        found = set()
        for i in range(len(tokens) - n + 1):
            if tuple(tokens[i : i + n - 1]) == prefix and tokens[i + n - 1] not in self.exempt:
                found.add(tokens[i + n - 1])
        return found

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        for row, ids in enumerate(input_ids[:, self.prompt_length :].tolist()):
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
