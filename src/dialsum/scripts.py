"""Which characters belong to which script: one table shared by the scorer (foreign-script rate) and
the generation-time suppressor (`dialsum.suppress`), so both agree on what "foreign" means.

Latin, digits, punctuation and Hangul are in no script here, so "Mr. Smith $5" or "#Person1#" is never
foreign. Script names are case-insensitive; an unknown name is a user error (DialsumError).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable

from dialsum.errors import DialsumError

DEFAULT_FORBIDDEN_SCRIPTS = [  # the default of generation.forbidden_scripts
    "Han",
    "Hiragana",
    "Katakana",
    "Cyrillic",
    "Thai",
    "Arabic",
    "Hebrew",
    "Greek",
    "Devanagari",
]

__all__ = ["SCRIPT_RANGES", "foreign_script_chars", "foreign_script_pattern", "has_foreign_script", "script_key"]


# Inclusive code-point ranges per script. Latin, digits, punctuation and Hangul (syllables, jamo,
# compatibility jamo) appear in none of them, so "Mr. Smith $5" or "#Person1#" is never foreign.
# Punctuation-only code points inside these blocks (katakana middle dot U+30FB, the double hyphen
# U+30A0, the baht sign U+0E3F) are left out on purpose.
SCRIPT_RANGES: dict[str, list[tuple[int, int]]] = {
    "Han": [
        (0x2E80, 0x2EFF),  # CJK radicals supplement
        (0x2F00, 0x2FDF),  # Kangxi radicals
        (0x3005, 0x3007),  # 々 〆 〇
        (0x3021, 0x3029),  # Hangzhou numerals
        (0x3038, 0x303B),
        (0x3400, 0x4DBF),  # CJK unified ideographs extension A
        (0x4E00, 0x9FFF),  # CJK unified ideographs
        (0xF900, 0xFAFF),  # CJK compatibility ideographs
        (0x20000, 0x2FA1F),  # extensions B-F, compatibility supplement
        (0x30000, 0x323AF),  # extensions G-H
    ],
    "Hiragana": [(0x3041, 0x309F), (0x1B001, 0x1B11F)],
    "Katakana": [
        (0x30A1, 0x30FA),
        (0x30FC, 0x30FF),  # ー ヽ ヾ ヿ
        (0x31F0, 0x31FF),  # phonetic extensions
        (0xFF66, 0xFF9F),  # halfwidth katakana
        (0x1B000, 0x1B000),
    ],
    "Cyrillic": [(0x0400, 0x052F), (0x1C80, 0x1C8F), (0x2DE0, 0x2DFF), (0xA640, 0xA69F)],
    "Thai": [(0x0E01, 0x0E3A), (0x0E40, 0x0E5B)],
    "Arabic": [(0x0600, 0x06FF), (0x0750, 0x077F), (0x0870, 0x08FF), (0xFB50, 0xFDFF), (0xFE70, 0xFEFF)],
    "Hebrew": [(0x0591, 0x05F4), (0xFB1D, 0xFB4F)],
    "Greek": [(0x0370, 0x03FF), (0x1F00, 0x1FFF)],
    "Devanagari": [(0x0900, 0x097F), (0xA8E0, 0xA8FF)],
}
_SCRIPT_NAMES = {name.lower(): name for name in SCRIPT_RANGES}


def script_key(scripts: Iterable[str] | None) -> tuple[str, ...]:
    """Canonical, hashable script names (case-insensitive input); an unknown name is a user error."""
    names = DEFAULT_FORBIDDEN_SCRIPTS if scripts is None else ([scripts] if isinstance(scripts, str) else scripts)
    canonical = []
    for name in names:
        found = _SCRIPT_NAMES.get(str(name).strip().lower())
        if found is None:
            raise DialsumError(f"unknown script {name!r}; valid scripts: {', '.join(SCRIPT_RANGES)}")
        if found not in canonical:
            canonical.append(found)
    return tuple(canonical)


@functools.lru_cache(maxsize=64)
def _compiled(scripts: tuple[str, ...]) -> re.Pattern[str] | None:
    if not scripts:
        return None
    parts = [
        re.escape(chr(lo)) if lo == hi else f"{re.escape(chr(lo))}-{re.escape(chr(hi))}"
        for name in scripts
        for lo, hi in SCRIPT_RANGES[name]
    ]
    return re.compile("[" + "".join(parts) + "]")


def foreign_script_pattern(scripts: Iterable[str] | None = None) -> re.Pattern[str] | None:
    """A compiled character class matching any character of `scripts` (None: the defaults; empty: None).

    Cached per script set, so callers scanning a whole vocabulary can call it freely.
    """
    return _compiled(script_key(scripts))


def has_foreign_script(text: str, scripts: Iterable[str] | None = None) -> bool:
    """True when `text` has at least one character of a forbidden script (default: DEFAULT_FORBIDDEN_SCRIPTS)."""
    pattern = _compiled(script_key(scripts))
    return pattern is not None and pattern.search(text) is not None


def foreign_script_chars(text: str, scripts: Iterable[str] | None = None) -> set[str]:
    """The distinct forbidden-script characters in `text` (for reports: *which* leaked, not just whether)."""
    pattern = _compiled(script_key(scripts))
    return set(pattern.findall(text)) if pattern is not None else set()
