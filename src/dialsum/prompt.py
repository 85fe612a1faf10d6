"""Build the structured prompt: `[Conversation]` lines, then `[Question]`, under a short system prompt."""

from __future__ import annotations

import re

from dialsum.config import PromptConfig
from dialsum.data import Dialogue, Turn

_PERSON_TAG = re.compile(r"#Person(\d+)#")


def render_speaker(speaker: str, style: str) -> str:
    """'tag' keeps the source speaker ('#Person1#'); 'korean' renders '#Person1#' as '화자1'; 'prefixed' puts
    '화자' before the source id, as the Korean_DCS 2024 baseline does ('SD2000001' → '화자SD2000001')."""
    if style == "korean":
        return _PERSON_TAG.sub(lambda m: f"화자{m.group(1)}", speaker)
    if style == "prefixed":
        return f"화자{speaker}"
    return speaker


def topic_of(dialogue: Dialogue, prompt: PromptConfig) -> str:
    return (dialogue.topic or "").strip() or prompt.default_topic


def conversation_lines(dialogue: Dialogue, prompt: PromptConfig, turns: list[Turn] | None = None) -> list[str]:
    """One `speaker: utterance` line per turn (multi-line utterances stay on their own lines)."""
    turns = dialogue.turns if turns is None else turns
    lines = [dialogue.preamble] if dialogue.preamble and turns is dialogue.turns else []
    lines += [f"{render_speaker(t.speaker, prompt.speaker_style)}: {t.utterance}" for t in turns]
    return lines


def user_message(dialogue: Dialogue, prompt: PromptConfig, turns: list[Turn] | None = None) -> str:
    conversation = "\n".join(conversation_lines(dialogue, prompt, turns))
    question = prompt.question.format(topic=topic_of(dialogue, prompt))
    return f"{prompt.conversation_header}\n{conversation}\n\n{prompt.question_header}\n{question}"


def build_messages(dialogue: Dialogue, prompt: PromptConfig, turns: list[Turn] | None = None) -> list[dict[str, str]]:
    """System + user chat messages; `turns` replaces the dialogue's turns when trimming a long dialogue."""
    messages = []
    if prompt.system:
        messages.append({"role": "system", "content": prompt.system})
    messages.append({"role": "user", "content": user_message(dialogue, prompt, turns)})
    return messages


def seq2seq_source(dialogue: Dialogue, prompt: PromptConfig, turns: list[Turn] | None = None) -> str:
    """Encoder input for BART-style models: the conversation lines alone (no chat markup, no question)."""
    return "\n".join(conversation_lines(dialogue, prompt, turns))
