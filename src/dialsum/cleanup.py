"""Summary clean-up after decoding: each step a config switch (`cleanup.*`), each change counted.

What LLM summaries of DialogSum-Korean get wrong in ways a reference never does:

* speaker tags and masks in another spelling: `#Person 1#`, `# Person1 #`, `Person1:`, `#person1#`,
  `# PhoneNumber #` -> `#Person1#`, `#PhoneNumber#` (the references' spelling, which ROUGE matches
  token for token);
* `<think>...</think>` blocks (Qwen3 writes them even with thinking off), an unclosed `<think>` at the
  end of a cut-off generation, a stray `</think>`;
* decoding artefacts: unused/reserved vocabulary entries (`<unused68>`, `[unused3]`, `<extra_id_0>`,
  `<|reserved_special_token_5|>`), U+FFFD;
* optionally, stray characters of a forbidden script (Han in a Korean summary). Off by default: with
  suppression on none can appear, and with it off the foreign-script rate should show them, not hide them;
* optionally, an unfinished last sentence (a generation cut off by `max_new_tokens`).

`clean(text, config)` returns the cleaned text and which steps changed it; `clean_all` cleans a list
and counts the changes per step, for the run's report.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from dialsum.config import CleanupSettings
from dialsum.scripts import foreign_script_pattern

__all__ = [
    "MASKS",
    "STEPS",
    "clean",
    "clean_all",
    "drop_unfinished_sentence",
    "normalize_tags",
    "remove_artifacts",
    "remove_foreign_chars",
    "remove_think",
]

STEPS = ("normalize_tags", "remove_think", "remove_artifacts", "remove_foreign_chars", "drop_unfinished_sentence")

# The masks of personal data in DialogSum-Korean, as the data spells them.
MASKS = (
    "PhoneNumber",
    "Address",
    "DateOfBirth",
    "PassportNumber",
    "Email",
    "SSN",
    "CardNumber",
    "CarNumber",
)
_MASK_BY_KEY = {re.sub(r"[\s_]", "", m).lower(): m for m in MASKS}

# A person tag in any spelling: '#' and spaces (optional), 'Person' in any case, spaces, digits, spaces and '#'
# (optional). Spaces only count inside the hashes, so 'Person2는' keeps the space before it. Not inside a word
# ('Salesperson1') and not before a letter ('Person10x').
_PERSON = re.compile(r"(?<![A-Za-z0-9#])(?:#[ \t]*)?(?i:person)[ \t]*(\d+)(?:[ \t]*#)?(?![A-Za-z])")
_MASK = re.compile(r"#[ \t]*([A-Za-z][A-Za-z_ \t]*?[A-Za-z])[ \t]*#")

_THINK_BLOCK = re.compile(r"<think>.*?</think>", re.DOTALL)
_THINK_OPEN = re.compile(r"<think>.*\Z", re.DOTALL)  # a block the generation never closed
_THINK_STRAY = re.compile(r"</?think>")

_RESERVED = re.compile(
    r"<unused\d+>|\[unused\d+\]|<extra_id_\d+>|<\|reserved_special_token_\d+\|>|<\|?reserved_\d+\|?>|\[UNK\]|<unk>"
)

# Where a Korean (or English) sentence may end: a full stop, ?, !, an ellipsis, optionally closed by a quote
# or bracket. Summaries in DialogSum-Korean end in '.', and their last sentence ends in -다/-요 before it.
_SENTENCE_END = re.compile(r"[.!?…][\"'”’)\]]*(?=\s|$)")
# A last sentence that ends in a Korean sentence-final ending without its full stop is finished.
_FINAL_ENDING = re.compile(r"(?:다|요|죠|까)[\"'”’)\]]*$")


def normalize_tags(text: str) -> str:
    """`#Person 1#`, `# Person1 #`, `person1`, `Person1:` -> `#Person1#` (colon kept); masks likewise."""

    def person(match: re.Match) -> str:
        spelled = match.group(0)
        if "#" not in spelled and not spelled.lstrip().startswith("Person"):
            return spelled  # 'person 2' in running English text is no tag
        return f"#Person{int(match.group(1))}#"

    def mask(match: re.Match) -> str:
        canonical = _MASK_BY_KEY.get(re.sub(r"[\s_]", "", match.group(1)).lower())
        return f"#{canonical}#" if canonical else match.group(0)

    return _MASK.sub(mask, _PERSON.sub(person, text))


def remove_think(text: str) -> str:
    """Drop `<think>...</think>` blocks, an unclosed `<think>` and what follows it, and stray think tags."""
    text = _THINK_BLOCK.sub(" ", text)
    text = _THINK_OPEN.sub(" ", text)
    return _THINK_STRAY.sub(" ", text)


# Control characters (C0 and C1, but tab and line ends, which become spaces): byte-level vocabularies hold a token
# for each, an undertrained model emits them (seen: U+0019, U+0003), and no summary or CSV cell wants them.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")


def remove_artifacts(text: str) -> str:
    """Drop reserved/unused vocabulary entries, U+FFFD and control characters."""
    return _CONTROL.sub("", _RESERVED.sub("", text).replace("\ufffd", ""))


def remove_foreign_chars(text: str, forbidden_scripts: Iterable[str] | None = ("Han",)) -> str:
    """Drop characters of the forbidden scripts (Latin names and Hangul are never in them)."""
    pattern = foreign_script_pattern(list(forbidden_scripts or []))
    return pattern.sub("", text) if pattern is not None else text


def drop_unfinished_sentence(text: str) -> str:
    """Cut a trailing fragment after the last sentence end ('... 설명합니다. 그리고 #Person2#는' -> '... 설명합니다.').

    A text without any sentence end, or whose tail ends in -다/-요/-죠/-까 (finished but for the full stop),
    stays as it is."""
    stripped = text.rstrip()
    ends = list(_SENTENCE_END.finditer(stripped))
    if not ends or ends[-1].end() == len(stripped) or _FINAL_ENDING.search(stripped):
        return text
    return stripped[: ends[-1].end()]


@dataclass(frozen=True)
class _Switches:
    normalize_tags: bool = True
    remove_think: bool = True
    remove_artifacts: bool = True
    remove_foreign_chars: bool = False
    drop_unfinished_sentence: bool = False


def _switches(section: CleanupSettings | None) -> _Switches:
    """The switches of the config's `cleanup` section, or None (the defaults)."""
    if section is None:
        return _Switches()
    return _Switches(**{step: bool(getattr(section, step)) for step in STEPS})


def clean(
    text: str, section: CleanupSettings | None = None, forbidden_scripts: Iterable[str] | None = ("Han",)
) -> tuple[str, list[str]]:
    """(cleaned text, the steps that changed it). Whitespace is collapsed at the end (not counted)."""
    switches = _switches(section)
    changed: list[str] = []
    steps = (
        ("remove_think", remove_think),
        ("remove_artifacts", remove_artifacts),
        ("remove_foreign_chars", lambda t: remove_foreign_chars(t, forbidden_scripts)),
        ("normalize_tags", normalize_tags),
        ("drop_unfinished_sentence", drop_unfinished_sentence),
    )
    for name, step in steps:
        if not getattr(switches, name):
            continue
        after = step(text)
        if " ".join(after.split()) != " ".join(text.split()):
            changed.append(name)
        text = after
    return " ".join(text.split()), changed


def clean_all(
    texts: Sequence[str],
    section: CleanupSettings | None = None,
    forbidden_scripts: Iterable[str] | None = ("Han",),
    changes: list[list[str]] | None = None,
) -> tuple[list[str], dict[str, int]]:
    """Clean every text; counts per step (switched-on steps only) of the texts it changed. `changes`, when given,
    receives the steps that changed each text, in order."""
    switches = _switches(section)
    counts = {step: 0 for step in STEPS if getattr(switches, step)}
    cleaned = []
    for text in texts:
        result, changed = clean(text, section, forbidden_scripts)
        if changes is not None:
            changes.append(changed)
        for step in changed:
            counts[step] += 1
        cleaned.append(result)
    return cleaned, counts


# ---------------------------------------------------------------- decoded text to one line

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
