"""Tokenize prompt and target separately, so the loss falls on the summary only.

Causal models: `input_ids = chat_prompt(add_generation_prompt=True) + summary + end-of-turn`,
`labels = [-100] * len(prompt) + target`. We never search the rendered text for an assistant
header: the prompt we train on is, token for token, the prompt we generate from.
A dialogue that does not fit loses turns from its end, by one rule at training and inference
(`prompt_budget`: max_length minus the answer's budget); the summary is never cut.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from dialsum.config import Config, PromptSettings, token_budget
from dialsum.data import Dialogue, Turn
from dialsum.errors import ConfigError, DataError
from dialsum.prompt import build_messages, seq2seq_source

IGNORE_INDEX = -100
# Llama-3.1+ templates print "Today Date: ..." from the clock: pin it so train and inference prompts match.
PINNED_DATE = "26 Jul 2024"
PAD_CANDIDATES = ["<|finetune_right_pad_id|>", "<|pad|>", "<pad>", "<|endoftext|>", "[PAD]"]
_PROBE_SUMMARY = "두 사람이 약속 시간을 정한다."


class TargetTooLong(DataError):
    """The summary alone (plus the minimal prompt) exceeds max_length."""


# ---------------------------------------------------------------- tokenizer set-up


def ensure_pad_token(tokenizer) -> bool:
    """Give the tokenizer a pad token that is not EOS, so EOS is never masked out of attention.

    Nor the turn closer (`end_of_turn_token`), which ends every label. Returns True when a new token was
    added (the model's embeddings must then be resized).
    """
    vocab = tokenizer.get_vocab()
    taken = {tokenizer.eos_token_id, vocab.get(end_of_turn_token(tokenizer))}
    if tokenizer.pad_token is not None and tokenizer.pad_token_id not in taken:
        return False
    for candidate in PAD_CANDIDATES:
        if candidate in vocab and vocab[candidate] not in taken:
            tokenizer.pad_token = candidate
            return False
    tokenizer.add_special_tokens({"pad_token": "<|pad|>"})
    return True


def render_prompt(tokenizer, messages: list[dict[str, str]]) -> str:
    """The generation prompt as text: the chat template with add_generation_prompt, or the plain fallback."""
    if tokenizer.chat_template:
        return tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True, date_string=PINNED_DATE
        )
    return fallback_prompt(tokenizer, messages)


def fallback_prompt(tokenizer, messages: list[dict[str, str]]) -> str:
    """For tokenizers without a chat template (base models):

    <bos>### System:\\n{system}\\n\\n### User:\\n{user}\\n\\n### Assistant:\\n
    """
    parts = [tokenizer.bos_token or ""]
    for message in messages:
        parts.append(f"### {message['role'].capitalize()}:\n{message['content']}\n\n")
    parts.append("### Assistant:\n")
    return "".join(parts)


def _full_rendering(tokenizer, messages, summary: str) -> str:
    return tokenizer.apply_chat_template(
        [*messages, {"role": "assistant", "content": summary}], tokenize=False, date_string=PINNED_DATE
    )


def end_of_turn_token(tokenizer) -> str:
    """The token that closes an assistant turn, found by rendering one through the chat template
    (`<|eot_id|>` for Llama-3, `<|im_end|>` for Qwen) — not by looking for EOS among the named special
    tokens: a base model's EOS (`<|end_of_text|>`, `<|endoftext|>`) is not what its template closes turns with.
    Without a template (or when the template closes with plain text), EOS. The same token ends every
    training label, stops generation and cuts a generated summary (`cleanup.clean_summary`)."""
    if tokenizer.chat_template:
        messages = [{"role": "user", "content": "안녕"}]
        full = _full_rendering(tokenizer, messages, _PROBE_SUMMARY)
        after = full.split(_PROBE_SUMMARY, 1)[-1]
        ids = tokenizer(after, add_special_tokens=False)["input_ids"] if after else []
        added = {str(t) for t in getattr(tokenizer, "added_tokens_decoder", {}).values()}
        if ids:
            token = tokenizer.convert_ids_to_tokens(ids[0])
            if token in added:
                return token
    if tokenizer.eos_token is None:
        raise DataError("tokenizer has neither an EOS token nor a chat template that closes turns")
    return tokenizer.eos_token


@dataclass
class TemplateCheck:
    """What a chat template does that could silently corrupt the label mask, said in plain words."""

    ok: bool = True
    notes: list[str] = field(default_factory=list)  # harmless quirks dialsum handles
    problems: list[str] = field(default_factory=list)  # the prompt is not a prefix of the full rendering


def check_chat_template(tokenizer, prompt: PromptSettings) -> TemplateCheck:
    """The prompt tokens must be a prefix of the full chat rendering with the assistant turn."""
    check = TemplateCheck()
    if not tokenizer.chat_template:
        check.notes.append("no chat template: using the plain '### User/### Assistant' fallback format")
        return check
    probe = Dialogue(
        id="probe", turns=[Turn("#Person1#", "안녕하세요."), Turn("#Person2#", "반갑습니다.")], topic="인사"
    )
    messages = build_messages(probe, prompt)
    prompt_text = render_prompt(tokenizer, messages)
    full_text = _full_rendering(tokenizer, messages, _PROBE_SUMMARY)
    prompt_ids = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
    full_ids = tokenizer(full_text, add_special_tokens=False)["input_ids"]
    if not full_text.startswith(prompt_text):
        cut = next((i for i, (a, b) in enumerate(zip(prompt_text, full_text)) if a != b), len(full_text))
        check.ok = False
        check.problems.append(
            "the generation prompt is not a prefix of the full chat rendering (they differ at "
            f"{prompt_text[cut : cut + 40]!r} vs {full_text[cut : cut + 40]!r}); dialsum trains on the generation "
            "prompt + summary, exactly what it generates from, but the template's own training format differs"
        )
    elif full_ids[: len(prompt_ids)] != prompt_ids:
        check.ok = False
        check.problems.append(
            "the prompt's tokens are not a prefix of the full rendering's tokens (a merge crosses the boundary)"
        )
    else:
        between = full_text[len(prompt_text) :].split(_PROBE_SUMMARY, 1)[0]
        if between.strip():
            check.notes.append(
                f"the template puts {between!r} before an assistant answer that the generation prompt lacks "
                "(e.g. a Qwen3 <think> block); dialsum trains on the generation prompt + summary, as it generates"
            )
    dated = tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True, date_string="01 Jan 2000"
    )
    if dated != prompt_text:
        check.notes.append(
            f"the template prints a date line; dialsum pins it to '{PINNED_DATE}' for training and inference"
        )
    user_only = tokenizer.apply_chat_template(
        messages[-1:], tokenize=False, add_generation_prompt=True, date_string=PINNED_DATE
    )
    if not prompt.system and "system" in user_only:
        check.notes.append("no system prompt configured, and the template injects its own default system prompt")
    return check


# ---------------------------------------------------------------- causal


def prepare_tokenizer(config: Config, dialogues: list[Dialogue]):
    """The tokenizer exactly as training uses it (and `dialsum inspect` shows it): loaded, a pad token that is not
    the turn closer, seq2seq speaker/mask tags added as tokens, the chat template checked.

    Returns (tokenizer, added_tokens, template_notes): the tags added (seq2seq) and what the template does that
    could corrupt the label mask (decoder-only), for the caller to print and dialogue."""
    from dialsum.models import load_tokenizer

    tokenizer = load_tokenizer(config.model.name_or_path, config)
    ensure_pad_token(tokenizer)
    if config.model.kind == "seq2seq":
        return tokenizer, add_seq2seq_special_tokens(tokenizer, dialogues), []
    check = check_chat_template(tokenizer, config.prompt)
    return tokenizer, [], check.notes + check.problems


def _target_ids(tokenizer, summary: str, end_token: str) -> list[int]:
    return tokenizer(summary, add_special_tokens=False)["input_ids"] + [tokenizer.convert_tokens_to_ids(end_token)]


def _summary_of(dialogue: Dialogue) -> str:
    """The first reference as read: the reader strips it unless data.strip_whitespace is off (the DCS baseline's
    target keeps the source's whitespace)."""
    if not dialogue.references or not dialogue.references[0].strip():
        raise DataError(f"record {dialogue.id}: field 'summary' is empty; training needs a summary")
    return dialogue.references[0]


def _fit_turns(dialogue: Dialogue, budget: int, ids_with) -> tuple[list[int], int]:
    """Encode the longest leading run of turns whose ids fit `budget` tokens (binary search).

    Returns those ids and the number of turns cut; -1 (with the no-turn ids) when not even zero
    turns fit. Each candidate is tokenized once, and the winner's ids are returned, not recomputed.
    """
    turns = dialogue.turns
    ids = ids_with(turns)
    if len(ids) <= budget:
        return ids, 0
    best = ids_with([])
    if len(best) > budget:
        return best, -1
    low, high = 0, len(turns) - 1  # `low` turns always fit
    while low < high:
        middle = (low + high + 1) // 2
        ids = ids_with(turns[:middle])
        if len(ids) <= budget:
            low, best = middle, ids
        else:
            high = middle - 1
    return best, len(turns) - low


def _prompt_ids(tokenizer, dialogue: Dialogue, config: Config, turns: list[Turn]) -> list[int]:
    return tokenizer(
        render_prompt(tokenizer, build_messages(dialogue, config.prompt, turns)), add_special_tokens=False
    )["input_ids"]


def prompt_budget(config: Config, target_length: int = 0) -> int:
    """The one trimming rule, for training and inference alike: the prompt gets `training.max_length` minus
    the answer's budget, which is `generation.max_new_tokens` (with `auto`: its cap; or the summary itself, when
    that is longer).
    So a dialogue is cut by the same turns whether it is trained on, dev-scored or predicted."""
    return config.training.max_length - max(target_length, token_budget(config.generation))


def encode_causal(tokenizer, dialogue: Dialogue, config: Config, end_token: str | None = None):
    """Returns ({"input_ids", "labels"}, number of turns cut). Raises TargetTooLong."""
    end_token = end_token or end_of_turn_token(tokenizer)
    target = _target_ids(tokenizer, _summary_of(dialogue), end_token)
    max_length = config.training.max_length
    budget = prompt_budget(config, len(target))
    prompt, cut = _fit_turns(dialogue, budget, lambda t: _prompt_ids(tokenizer, dialogue, config, t))
    if cut < 0:
        raise TargetTooLong(
            f"record {dialogue.id}: field 'summary' is {len(target)} tokens; with the prompt it cannot fit "
            f"training.max_length={max_length} minus the answer budget (generation.max_new_tokens="
            f"{config.generation.max_new_tokens}) (raise max_length or set training.skip_too_long=true)"
        )
    return {"input_ids": prompt + target, "labels": [IGNORE_INDEX] * len(prompt) + target}, cut


def encode_prompt_with_info(tokenizer, dialogue: Dialogue, config: Config) -> tuple[list[int], int]:
    """The generation prompt for inference and the number of turns cut, by the training rule (`prompt_budget`)."""
    budget = prompt_budget(config)
    ids, cut = _fit_turns(dialogue, budget, lambda t: _prompt_ids(tokenizer, dialogue, config, t))
    if cut < 0:
        raise ConfigError(
            f"training.max_length={config.training.max_length} minus generation.max_new_tokens="
            f"{config.generation.max_new_tokens} leaves {budget} tokens, less than the prompt of record "
            f"{dialogue.id} without any turn ({len(ids)} tokens): raise max_length or lower max_new_tokens"
        )
    return ids, cut


def encode_prompt(tokenizer, dialogue: Dialogue, config: Config) -> list[int]:
    """The generation prompt for inference, trimmed like training so the question block always survives."""
    return encode_prompt_with_info(tokenizer, dialogue, config)[0]


# ---------------------------------------------------------------- seq2seq

MASK_TOKEN_PATTERN = r"#[A-Za-z]+\d*#"


def add_seq2seq_special_tokens(tokenizer, dialogues: list[Dialogue]) -> list[str]:
    """Speaker tags (#Person1#) and masks (#PhoneNumber#) become single, never-split tokens when the
    vocabulary lacks them. They are added as non-special tokens on purpose: summaries contain them
    ("#Person1#은 ..."), and `decode(skip_special_tokens=True)` must not delete them from predictions."""
    import re

    from tokenizers import AddedToken

    found = set()
    for dialogue in dialogues:
        texts = [t.speaker + " " + t.utterance for t in dialogue.turns] + dialogue.references
        for text in texts:
            found.update(re.findall(MASK_TOKEN_PATTERN, text))
    vocab = tokenizer.get_vocab()
    missing = sorted(token for token in found if token not in vocab)
    if missing:
        tokenizer.add_tokens(
            [AddedToken(token, single_word=False, normalized=False, special=False) for token in missing]
        )
    _metaspace_first_only(tokenizer)
    return missing


def _metaspace_first_only(tokenizer) -> None:
    """koBART's SentencePiece-style pre-tokenizer (Metaspace, prepend_scheme=always) prepends '▁' to the text
    after every added token: '#Person2#는' becomes '#Person2#', '▁는' and decodes as '#Person2# 는'. With
    prepend_scheme=first only the start of the text gets it, so tags round-trip exactly (saved with the model)."""
    from tokenizers import decoders, pre_tokenizers

    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return
    for part, cls in (("pre_tokenizer", pre_tokenizers.Metaspace), ("decoder", decoders.Metaspace)):
        current = getattr(backend, part, None)
        if isinstance(current, cls) and current.prepend_scheme == "always":
            setattr(backend, part, cls(replacement=current.replacement, prepend_scheme="first", split=current.split))


def _with_bos_eos(tokenizer, ids: list[int]) -> list[int]:
    """facebook/bart's tokenizer wraps text in <s> ... </s>; koBART's adds neither. Without the </s>
    a seq2seq model never learns to stop, so make every sequence look like BART's."""
    if tokenizer.bos_token_id is not None and (not ids or ids[0] != tokenizer.bos_token_id):
        ids = [tokenizer.bos_token_id] + ids
    if tokenizer.eos_token_id is not None and ids[-1] != tokenizer.eos_token_id:
        ids = ids + [tokenizer.eos_token_id]
    return ids


def _source_with_cut(tokenizer, dialogue: Dialogue, config: Config) -> tuple[list[int], int]:
    """Encoder input ids trimmed by turns to `training.max_length`; when not even the first turn fits,
    the text itself is truncated (a cut dialogue summarises better than none)."""
    max_length = config.training.max_length

    def source_ids(turns):
        text = seq2seq_source(dialogue, config.prompt, turns)
        return _with_bos_eos(tokenizer, tokenizer(text, add_special_tokens=False)["input_ids"])

    ids, cut = _fit_turns(dialogue, max_length, source_ids)
    if cut < 0 or (dialogue.turns and cut == len(dialogue.turns)):
        ids = tokenizer(seq2seq_source(dialogue, config.prompt), add_special_tokens=False)["input_ids"]
        return _with_bos_eos(tokenizer, ids[: max_length - 2]), len(dialogue.turns)
    return ids, cut


def encode_inference_inputs(
    tokenizer, dialogues: list[Dialogue], config: Config, kind: str
) -> tuple[list[list[int]], "EncodeStats"]:
    """Model inputs for generation (causal: the prompt; seq2seq: the encoder source), trimmed by the training
    rule, with the count of what was trimmed so the caller can say so."""
    stats = EncodeStats(total=len(dialogues))
    inputs = []
    for dialogue in dialogues:
        if kind == "causal":
            ids, cut = encode_prompt_with_info(tokenizer, dialogue, config)
        else:
            ids, cut = _source_with_cut(tokenizer, dialogue, config)
        inputs.append(ids)
        stats.encoded += 1
        stats.trimmed += cut > 0
        stats.turns_cut += cut
        stats.cuts.append(cut)
    return inputs, stats


def encode_seq2seq(tokenizer, dialogue: Dialogue, config: Config):
    """Returns ({"input_ids", "labels"}, number of turns cut from the source). Raises TargetTooLong."""
    summary = _summary_of(dialogue)
    labels = _with_bos_eos(tokenizer, tokenizer(summary, add_special_tokens=False)["input_ids"])
    if len(labels) > config.training.max_target_length:
        raise TargetTooLong(
            f"record {dialogue.id}: field 'summary' is {len(labels)} tokens > training.max_target_length="
            f"{config.training.max_target_length} (raise it or set training.skip_too_long=true)"
        )
    source, cut = _source_with_cut(tokenizer, dialogue, config)
    return {"input_ids": source, "labels": labels}, cut


# ---------------------------------------------------------------- datasets


@dataclass
class EncodeStats:
    total: int = 0
    encoded: int = 0
    trimmed: int = 0  # examples that lost turns to fit max_length
    turns_cut: int = 0
    skipped_ids: list[str] = field(default_factory=list)  # target alone too long, with skip_too_long
    no_turn_ids: list[str] = field(default_factory=list)  # training: not even the first turn fits; skipped
    cuts: list[int] = field(default_factory=list)  # inference: turns cut from the end of each dialogue, in order

    def describe(self) -> str:
        text = f"{self.encoded}/{self.total} examples encoded, {self.trimmed} trimmed ({self.turns_cut} turns cut)"
        if self.skipped_ids:
            text += f", {len(self.skipped_ids)} skipped (summary too long): {', '.join(self.skipped_ids[:5])}"
        if self.no_turn_ids:
            text += (
                f", {len(self.no_turn_ids)} skipped (not even the first turn fits training.max_length; a summary "
                f"without its dialogue would teach the model to invent): {', '.join(self.no_turn_ids[:5])}"
            )
        return text


def encode_dialogues(tokenizer, dialogues: list[Dialogue], config: Config) -> tuple[list[dict], EncodeStats]:
    """Encode a whole split, counting what was trimmed and what was skipped (never silently)."""
    stats = EncodeStats(total=len(dialogues))
    examples = []
    causal = config.model.kind == "causal"
    if causal and prompt_budget(config) <= 0:
        raise ConfigError(
            f"generation.max_new_tokens={config.generation.max_new_tokens} leaves no room for a prompt in "
            f"training.max_length={config.training.max_length}: raise max_length or lower max_new_tokens"
        )
    end_token = end_of_turn_token(tokenizer) if causal else None
    for dialogue in dialogues:
        try:
            if causal:
                example, cut = encode_causal(tokenizer, dialogue, config, end_token)
            else:
                example, cut = encode_seq2seq(tokenizer, dialogue, config)
        except TargetTooLong:
            if not config.training.skip_too_long:
                raise
            stats.skipped_ids.append(dialogue.id)
            continue
        if causal and dialogue.turns and cut == len(dialogue.turns):
            stats.no_turn_ids.append(dialogue.id)
            continue
        stats.encoded += 1
        stats.trimmed += cut > 0
        stats.turns_cut += cut
        examples.append(example)
    return examples, stats
