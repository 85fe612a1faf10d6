"""Length control: a token limit per dialogue from a rule fitted on the training data.

A fixed `max_new_tokens` is either too short for long dialogues (summaries cut mid-sentence) or too
long for short ones (room to ramble). `generation.max_new_tokens: auto` instead buckets the training
dialogues by length (characters of their utterances, quantile edges) and gives each bucket the
`generation.length_quantile` quantile of its summaries' token counts, plus one for the stop token, capped at
`generation.max_new_tokens_cap`. `dialsum train` fits the rule before training and stores it in
`generation.length_rule`, so the run's config.yaml reproduces its generation; `dialsum run` then also generates dev
with the rule's single global limit (the same quantile over all summaries, no buckets) and report.md shows both.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from dialsum.config import Config, GenerationSettings, config_from_dict
from dialsum.data import Dialogue, load_dialogues
from dialsum.errors import ConfigError

__all__ = ["dialogue_chars", "fit_length_rule", "limits_for", "rule_limit", "with_length_rule"]

_FITTED: dict[tuple, dict[str, Any]] = {}  # rules fitted in this process, per (train file, tokenizer, settings)


def dialogue_chars(dialogue: Dialogue) -> int:
    """The length the rule buckets on: characters of the utterances (speaker tags and layout excluded)."""
    return len(dialogue.preamble) + sum(len(turn.utterance) for turn in dialogue.turns)


def _summary_tokens(tokenizer, summaries: Sequence[str]) -> list[int]:
    encoded = tokenizer(list(summaries), add_special_tokens=False)["input_ids"]
    return [len(ids) + 1 for ids in encoded]  # + the stop token the generation must also produce


def fit_length_rule(
    dialogues: Sequence[Dialogue], tokenizer, buckets: int = 5, quantile: float = 0.95, cap: int = 256, source: str = ""
) -> dict[str, Any]:
    """Bucket edges (dialogue characters, training quantiles) and each bucket's token limit."""
    labeled = [d for d in dialogues if d.references]
    if len(labeled) < buckets:
        raise ConfigError(
            f"generation.max_new_tokens=auto: {len(labeled)} labeled training dialogues in "
            f"{source or 'the data'}, fewer than generation.length_buckets={buckets}"
        )
    chars = np.array([dialogue_chars(d) for d in labeled], dtype=float)
    tokens = np.array(_summary_tokens(tokenizer, [d.references[0] for d in labeled]), dtype=float)
    edges = sorted({float(np.quantile(chars, b / buckets)) for b in range(1, buckets)})
    index = np.searchsorted(edges, chars, side="left")  # bucket b: edges[b-1] < chars <= edges[b]
    rule_buckets = []
    for b in range(len(edges) + 1):
        members = tokens[index == b]
        limit = min(cap, math.ceil(float(np.quantile(members, quantile)))) if len(members) else cap
        rule_buckets.append(
            {"max_chars": edges[b] if b < len(edges) else None, "limit": int(limit), "n": int(len(members))}
        )
    return {
        "unit": "dialogue characters -> summary tokens (+1 stop token)",
        "quantile": quantile,
        "buckets": rule_buckets,
        "global_limit": int(min(cap, math.ceil(float(np.quantile(tokens, quantile))))),
        "cap": cap,
        "fitted_on": source,
        "n": len(labeled),
    }


def rule_limit(rule: dict[str, Any], chars: int) -> int:
    """The limit of the bucket a dialogue of `chars` characters falls in."""
    for bucket in rule["buckets"]:
        if bucket["max_chars"] is None or chars <= bucket["max_chars"]:
            return int(bucket["limit"])
    return int(rule["buckets"][-1]["limit"])


def _rule(generation: GenerationSettings, tokenizer, train_path: str | None) -> dict[str, Any]:
    g = generation
    if g.length_rule is not None:
        return g.length_rule
    if not train_path:
        raise ConfigError("generation.max_new_tokens=auto needs generation.length_rule or data.train to fit it on")
    key = (
        str(train_path),
        getattr(tokenizer, "name_or_path", ""),
        g.length_buckets,
        g.length_quantile,
        g.max_new_tokens_cap,
    )
    if key not in _FITTED:
        _FITTED[key] = fit_length_rule(
            load_dialogues(train_path),
            tokenizer,
            g.length_buckets,
            g.length_quantile,
            g.max_new_tokens_cap,
            source=str(train_path),
        )
    return _FITTED[key]


def limits_for(
    generation: GenerationSettings, tokenizer, dialogues: Sequence[Dialogue], train_path: str | None = None
) -> list[int]:
    """Each dialogue's token limit under the generation section's rule (fitted on `train_path` when it has none)."""
    rule = _rule(generation, tokenizer, train_path)
    return [rule_limit(rule, dialogue_chars(d)) for d in dialogues]


def with_length_rule(config: Config, tokenizer) -> Config:
    """The config with its fitted rule in generation.length_rule (unchanged unless max_new_tokens is 'auto').
    `dialsum train` calls it, so the run's config.yaml carries the rule and predict needs no training file."""
    if config.generation.max_new_tokens != "auto" or config.generation.length_rule is not None:
        return config
    raw = config.to_dict()
    raw["generation"]["length_rule"] = _rule(config.generation, tokenizer, config.data.train)
    return config_from_dict(raw, source="length rule")
