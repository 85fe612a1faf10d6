"""What makes a generated training example safe to keep: it parses with dialsum's reader, keeps its source's speakers
and masks, has no forbidden script, a plausible length, and is neither a near-copy of a dev/test dialogue (a leak)
nor of its own source. Also the local speaker swap, and the leak check `dialsum train` runs on augmented files.

Similarity is the Jaccard index of character n-gram sets (speaker tags, masks and whitespace removed first, since
every dialogue shares them). The dev/test index is probed with a pigeonhole prefix: a pair with Jaccard >= t shares
at least ceil(t|A|) grams, so any |A| - ceil(t|A|) + 1 grams of A (the rarest) must hit it; the exact Jaccard is
computed only for the dialogues those grams reach.
"""

from __future__ import annotations

import math
import random
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from dialsum.data import Dialogue, data_files, load_dialogues, parse_turns
from dialsum.errors import DataError
from dialsum.scripts import has_foreign_script

__all__ = [
    "REASONS",
    "Candidate",
    "NgramIndex",
    "check_training_leaks",
    "dialogue_text",
    "masks",
    "speaker_swap",
    "validate",
]

# Every reason an answer can be rejected for, in the order the progress line and the summary show them.
REASONS = (
    "unparseable",
    "leak",
    "source_copy",
    "speakers",
    "turns",
    "masks",
    "foreign_script",
    "length",
    "failed",  # the request itself failed after every retry (no answer to validate)
)

_PERSON = re.compile(r"#Person\d+#")
_MASK = re.compile(r"#[A-Za-z][A-Za-z0-9_]*#")
_STRIP = re.compile(r"#[A-Za-z][A-Za-z0-9_]*#\s*:?|\s+")


def dialogue_text(dialogue: Dialogue) -> str:
    """A dialogue as the competition CSV writes it: `#PersonN#: utterance` lines."""
    lines = [dialogue.preamble] if dialogue.preamble else []
    lines += [f"{turn.speaker}: {turn.utterance}" for turn in dialogue.turns]
    return "\n".join(lines)


def masks(text: str) -> Counter:
    """The masks of a text (#PhoneNumber#, #Address#, ...), counted; #PersonN# tags are speakers, not masks."""
    return Counter(m for m in _MASK.findall(text) if not _PERSON.fullmatch(m))


def _grams(text: str, n: int) -> set[str]:
    flat = _STRIP.sub("", text)
    return {flat[i : i + n] for i in range(max(len(flat) - n + 1, 1))} if flat else set()


def jaccard(a: set[str], b: set[str]) -> float:
    if not a or not b:
        return 0.0
    shared = len(a & b)
    return shared / (len(a) + len(b) - shared)


class NgramIndex:
    """Dev and test dialogues, for 'is this text a near-copy of any of them?'."""

    def __init__(self, dialogues: list[tuple[str, str]], n: int):
        self.n = n
        self.ids = [id_ for id_, _ in dialogues]
        self.grams = [_grams(text, n) for _, text in dialogues]
        self.postings: dict[str, list[int]] = {}
        for doc, grams in enumerate(self.grams):
            for gram in grams:
                self.postings.setdefault(gram, []).append(doc)

    def __len__(self) -> int:
        return len(self.ids)

    def nearest(self, text: str, threshold: float) -> tuple[float, str | None]:
        """(similarity, id) of the most similar indexed dialogue when it reaches `threshold`, else (best, None)."""
        grams = _grams(text, self.n)
        if not grams or not self.ids:
            return 0.0, None
        probe = sorted(grams, key=lambda g: len(self.postings.get(g, ())))
        probe = probe[: len(grams) - math.ceil(threshold * len(grams)) + 1]
        reached = {doc for gram in probe for doc in self.postings.get(gram, ())}
        best, best_id = 0.0, None
        for doc in reached:
            score = jaccard(grams, self.grams[doc])
            if score > best:
                best, best_id = score, self.ids[doc]
        return best, (best_id if best >= threshold else None)


def leak_index(paths: list[str | Path | None], n: int) -> NgramIndex:
    """The dev and test dialogues of a config (files that are not set are skipped)."""
    pairs = []
    for path in paths:
        if path:
            pairs += [(f"{Path(path).name}:{d.id}", dialogue_text(d)) for d in load_dialogues(path)]
    return NgramIndex(pairs, n)


@dataclass
class Candidate:
    """One generated (or swapped) example, before it is validated and written."""

    fname: str
    dialogue: str
    summary: str
    topic: str | None
    source: str  # "recipe:original id"


def _length_ok(new: str, old: str, settings) -> bool:
    if not old:
        return True
    ratio = len(new) / len(old)
    return settings.min_length_ratio <= ratio <= settings.max_length_ratio


def validate(
    candidate: Candidate,
    kind: str,
    source: Dialogue | None,
    index: NgramIndex,
    settings,
    forbidden_scripts: list[str],
    reference_length: int | None = None,
    copies_of: list[str] | None = None,
) -> str | None:
    """The first reason `candidate` must not be kept, or None. `kind`: the recipe's answer ('dialogue', 'summary',
    'dialogue_summary' or 'swap'); `source`: the dialogue it was made from (None for synthetic);
    `reference_length`: the length a synthetic dialogue is compared with; `copies_of`: texts it must not copy."""
    preamble, turns = parse_turns(candidate.dialogue)
    if preamble or len(turns) < 2 or not all(t.utterance for t in turns) or not candidate.summary.strip():
        return "unparseable"
    if "\n" in candidate.summary.strip():
        return "unparseable"
    # A leak or a copy is named as such whatever else is wrong with the answer.
    if kind in ("dialogue", "dialogue_summary", "swap"):
        _, leaked = index.nearest(candidate.dialogue, settings.near_duplicate_threshold)
        if leaked is not None:
            return "leak"
    if kind in ("dialogue", "dialogue_summary"):
        grams = _grams(candidate.dialogue, settings.ngram)
        for text in copies_of or []:
            if jaccard(grams, _grams(text, settings.ngram)) >= settings.source_copy_threshold:
                return "source_copy"
    if kind == "summary" and source is not None and source.references:
        old = _grams(source.references[0], settings.ngram)
        if jaccard(_grams(candidate.summary, settings.ngram), old) >= settings.source_copy_threshold:
            return "source_copy"
    speakers = {t.speaker for t in turns}
    if not set(_PERSON.findall(candidate.summary)) <= speakers | set(_PERSON.findall(candidate.dialogue)):
        return "speakers"
    if kind == "dialogue" and source is not None:
        if speakers != {t.speaker for t in source.turns}:
            return "speakers"
        if [t.speaker for t in turns] != [t.speaker for t in source.turns]:
            return "turns"
        if masks(candidate.dialogue) != masks(dialogue_text(source)):
            return "masks"
    if has_foreign_script(candidate.dialogue + "\n" + candidate.summary, forbidden_scripts):
        return "foreign_script"
    if kind == "dialogue" and source is not None:
        if not _length_ok(candidate.dialogue, dialogue_text(source), settings):
            return "length"
    if kind == "summary" and source is not None and source.references:
        if not _length_ok(candidate.summary, source.references[0], settings):
            return "length"
    if kind == "dialogue_summary" and reference_length:
        if not _length_ok(candidate.dialogue, "x" * reference_length, settings):
            return "length"
    return None


def speaker_swap(dialogue: Dialogue, seed: int, variant: int = 0) -> tuple[dict[str, str], str, str] | None:
    """A consistent non-identity permutation of the #PersonN# tags of a dialogue, applied to every tag in the
    dialogue (speakers and mentions) and its summary; None for a dialogue with fewer than two people.
    Returns (mapping, dialogue text, summary)."""
    text = dialogue_text(dialogue)
    summary = dialogue.references[0] if dialogue.references else ""
    people = sorted(set(_PERSON.findall(text + "\n" + summary)), key=lambda p: int(p[7:-1]))
    if len(people) < 2:
        return None
    rng = random.Random(f"{seed}:{dialogue.id}:{variant}")
    order = list(people)
    while order == people:
        rng.shuffle(order)
    mapping = dict(zip(people, order))

    def apply(value: str) -> str:
        return _PERSON.sub(lambda m: mapping[m.group(0)], value)

    return mapping, apply(text), apply(summary)


def check_training_leaks(train, dev: str | None, test: str | None, settings) -> None:
    """`dialsum train`: an augmented training file (one with a `source` column) holding a dialogue that is a
    near-copy of a dev or test dialogue is refused, one line naming the file, row and the dialogue it copies."""
    loaded = [(path, load_dialogues(path)) for path in data_files(train)]
    augmented = [(path, dialogues) for path, dialogues in loaded if any(d.source for d in dialogues)]
    if not augmented or not (dev or test):
        return
    index = leak_index([dev, test], settings.ngram)
    for path, dialogues in augmented:
        for row, dialogue in enumerate(dialogues, start=1):
            score, leaked = index.nearest(dialogue_text(dialogue), settings.near_duplicate_threshold)
            if leaked is not None:
                raise DataError(
                    f"{path} row {row} (fname={dialogue.id}): near-copy of {leaked} (similarity {score:.2f} >= "
                    f"augment.near_duplicate_threshold {settings.near_duplicate_threshold}); an augmented file must "
                    "not contain dev or test dialogues: remove the row"
                )
