"""Build the structured prompt: `[Conversation]` lines, then `[Question]`, under a short system prompt."""

from __future__ import annotations

import re

from dialsum.config import Config, PromptSettings
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


def topic_of(dialogue: Dialogue, prompt: PromptSettings) -> str:
    """The topic the question names: the dialogue's own (unless prompt.topic=never), else default_topic.

    `auto` must be resolved first (`resolve_topic_policy`); unresolved it behaves like `always`."""
    if prompt.topic == "never":
        return prompt.default_topic
    # as read: the reader strips it unless data.strip_whitespace is off
    return dialogue.topic if (dialogue.topic or "").strip() else prompt.default_topic


def has_topics(dialogues: list[Dialogue]) -> bool:
    return bool(dialogues) and all((d.topic or "").strip() for d in dialogues)


def resolve_topic_policy(config: Config, *splits: list[Dialogue]) -> tuple[Config, str | None]:
    """Turn prompt.topic=auto into always/never so training, dev scoring and test prediction share one prompt form.

    `splits` are the dialogues at hand (train, dev); the configured data.test is read too, because the
    competition's test.csv has no `topic` column: a model trained on topics would see test prompts it never
    saw. Returns the resolved config and a one-line note saying what was chosen and why (None: nothing to say).
    """
    if config.prompt.topic != "auto":
        return config, None
    from dialsum.data import load_dialogues

    named = [("training data", s) for s in splits if s]
    if config.data.test:
        named.append((str(config.data.test), load_dialogues(config.data.test, config.data.strip_whitespace)))
    lacking = [name for name, dialogues in named if not has_topics(dialogues)]
    choice = "never" if lacking or not named else "always"
    resolved = config.model_copy(deep=True)
    resolved.prompt.topic = choice
    if choice == "never" and named and len(lacking) < len(named):
        note = (
            f"prompt.topic=auto -> never: {lacking[0]} has no topic for every dialogue, so every prompt (train, "
            f"dev, test) reads the default topic '{config.prompt.default_topic}' (set prompt.topic=always to "
            f"use topics where present)"
        )
        return resolved, note
    return resolved, None


def topic_mismatch(prompt: PromptSettings, dialogues: list[Dialogue], source: str) -> str | None:
    """One line when the prompts about to be generated lack the topics the model was trained with."""
    if prompt.topic != "always" or not dialogues:
        return None
    missing = sum(1 for d in dialogues if not (d.topic or "").strip())
    if not missing:
        return None
    return (
        f"{source}: {missing} of {len(dialogues)} dialogues have no topic while prompt.topic=always (training "
        f"used topics): their prompts read the default topic '{prompt.default_topic}', unlike training "
        f"(set prompt.topic=auto or never to train on the form predicted)"
    )


def conversation_lines(dialogue: Dialogue, prompt: PromptSettings, turns: list[Turn] | None = None) -> list[str]:
    """One `speaker: utterance` line per turn (multi-line utterances stay on their own lines)."""
    turns = dialogue.turns if turns is None else turns
    lines = [dialogue.preamble] if dialogue.preamble else []  # kept when turns are cut, too
    lines += [f"{render_speaker(t.speaker, prompt.speaker_style)}: {t.utterance}" for t in turns]
    return lines


def user_message(dialogue: Dialogue, prompt: PromptSettings, turns: list[Turn] | None = None) -> str:
    conversation = "\n".join(conversation_lines(dialogue, prompt, turns))
    question = prompt.question.format(topic=topic_of(dialogue, prompt))
    return f"{prompt.conversation_header}\n{conversation}\n\n{prompt.question_header}\n{question}"


def build_messages(dialogue: Dialogue, prompt: PromptSettings, turns: list[Turn] | None = None) -> list[dict[str, str]]:
    """System + user chat messages; `turns` replaces the dialogue's turns when trimming a long dialogue."""
    messages = []
    if prompt.system:
        messages.append({"role": "system", "content": prompt.system})
    messages.append({"role": "user", "content": user_message(dialogue, prompt, turns)})
    return messages


def seq2seq_source(dialogue: Dialogue, prompt: PromptSettings, turns: list[Turn] | None = None) -> str:
    """Encoder input for BART-style models: the conversation lines alone (no chat markup, no question)."""
    return "\n".join(conversation_lines(dialogue, prompt, turns))
