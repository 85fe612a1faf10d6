"""Read dialogues: the DialogSum-Korean competition CSV and the Korean_DCS JSON/JSONL, into one record type."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from dialsum.errors import DataError

__all__ = ["DataError", "Dialogue", "Turn", "load_dialogues"]


@dataclass(frozen=True)
class Turn:
    speaker: str  # as written in the source: "#Person1#" (CSV) or "SD2000001" (DCS)
    utterance: str


@dataclass
class Dialogue:
    id: str
    turns: list[Turn]
    topic: str | None = None  # CSV `topic`, or DCS `subject_keyword` joined by ", "
    references: list[str] = field(default_factory=list)  # gold summaries; empty for test files
    preamble: str = ""  # text before the first speaker tag, kept rather than dropped


def load_dialogues(path: str | Path) -> list[Dialogue]:
    raise NotImplementedError  # filled in by the data readers work
