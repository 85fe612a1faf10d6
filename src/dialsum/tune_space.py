"""The search space of `dialsum tune`: which decoding settings vary, over what values, and how a set of them
becomes the config a trial predicts with.

A space is the default one (beams, length penalty with beams, repetition penalty, n-gram ban, and the length rule's
quantile under `max_new_tokens: auto`) or a SPACE.yaml naming `generation.*` keys and lists of `prompt.question` /
`prompt.system` texts. Every value is validated against the config schema before anything runs, so a bad space is
one line and nothing is written.
"""

from __future__ import annotations

import difflib
import hashlib
import itertools
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from dialsum.config import Config, GenerationSettings, config_from_dict
from dialsum.errors import ConfigError

__all__ = ["Dimension", "Space", "apply_settings", "default_space", "load_space", "settings_hash"]

PROMPT_KEYS = ("prompt.question", "prompt.system")  # categorical only: texts, not numbers
TUNABLE_KEYS = tuple(f"generation.{name}" for name in GenerationSettings.model_fields if name != "length_rule")
LENGTH_KEYS = ("generation.length_quantile", "generation.length_buckets", "generation.max_new_tokens_cap")
GRID_MAX = 64  # every dimension categorical and at most this many combinations: enumerate them (GridSampler)


@dataclass(frozen=True)
class Dimension:
    """One searched key: `choices` (categorical) or a `low`..`high` range (int or float, optionally log)."""

    key: str
    choices: tuple | None = None
    low: float | None = None
    high: float | None = None
    integer: bool = False
    log: bool = False

    @property
    def free(self) -> bool:
        return len(self.choices) > 1 if self.choices is not None else self.low < self.high

    @property
    def fixed_value(self) -> Any:
        return self.choices[0] if self.choices is not None else self.low

    def suggest(self, trial) -> Any:
        """The trial's value (prompt texts are suggested by index: storage keeps numbers, the settings keep text)."""
        if self.choices is not None:
            if self.key in PROMPT_KEYS:
                return self.choices[trial.suggest_categorical(self.key, list(range(len(self.choices))))]
            return trial.suggest_categorical(self.key, list(self.choices))
        if self.integer:
            return trial.suggest_int(self.key, int(self.low), int(self.high), log=self.log)
        return trial.suggest_float(self.key, float(self.low), float(self.high), log=self.log)

    def to_dict(self) -> dict[str, Any]:
        if self.choices is not None:
            return {"key": self.key, "choices": list(self.choices)}
        return {"key": self.key, "low": self.low, "high": self.high, "integer": self.integer, "log": self.log}


@dataclass(frozen=True)
class Space:
    dimensions: tuple[Dimension, ...]
    source: str  # the SPACE.yaml, or 'default space'

    @property
    def keys(self) -> list[str]:
        return [d.key for d in self.dimensions]

    def grid(self) -> dict[str, list] | None:
        """The grid of a small all-categorical space (prompt texts by index), else None (TPE)."""
        free = [d for d in self.dimensions if d.free]
        if not all(d.choices is not None for d in free) or math.prod(len(d.choices) for d in free) > GRID_MAX:
            return None
        return {d.key: list(range(len(d.choices))) if d.key in PROMPT_KEYS else list(d.choices) for d in free}

    def combinations(self) -> int | None:
        grid = self.grid()
        return math.prod(len(values) for values in grid.values()) if grid is not None else None

    def suggest(self, trial, grid: bool = False) -> dict[str, Any]:
        """A trial's settings, key → value. Off the grid, the length penalty is searched only with beams (it does
        nothing in greedy search); on it, every dimension is (the settings hash folds the idle one away)."""
        settings: dict[str, Any] = {}
        for d in self.dimensions:
            if not d.free:
                settings[d.key] = d.fixed_value
            elif not grid and d.key == "generation.length_penalty" and settings.get("generation.num_beams", 2) == 1:
                continue
            else:
                settings[d.key] = d.suggest(trial)
        return settings

    def to_dict(self) -> list[dict[str, Any]]:
        return [d.to_dict() for d in self.dimensions]


def _bad(source: str, message: str) -> ConfigError:
    return ConfigError(f"{source}: {message}")


def _check_key(key: str, source: str) -> None:
    if key in TUNABLE_KEYS or key in PROMPT_KEYS:
        return
    from dialsum.config import config_fields

    if key == "generation.length_rule":
        raise _bad(source, "generation.length_rule is fitted, not searched; search generation.length_quantile")
    if key in {row["key"] for row in config_fields()}:
        raise _bad(source, f"'{key}' is not a decoding setting; a space names generation.* keys and lists of "
                   "prompt.question / prompt.system texts")  # fmt: skip
    close = difflib.get_close_matches(key, [*TUNABLE_KEYS, *PROMPT_KEYS], n=1, cutoff=0.6)
    raise _bad(source, f"unknown key '{key}'" + (f" (did you mean '{close[0]}'?)" if close else ""))


def _check_value(config: Config, key: str, value: Any, source: str) -> None:
    """The value must be one the config accepts for the key (num_beams 0, a float for an int key: one line)."""
    try:
        config_from_dict(config.to_dict(), [f"{key}={json.dumps(value, ensure_ascii=False)}"], source=source)
    except ConfigError as error:  # the value came from the space file, not from a --set: name the file
        message = str(error).removeprefix(f"--set {key}: ").removeprefix(f"{source}: config key '{key}': ")
        raise _bad(source, f"{key}: {message}") from None


def _dimension(key: str, spec: Any, config: Config, source: str) -> Dimension:
    _check_key(key, source)
    where = f"{source}: {key}"
    if isinstance(spec, list):
        if not spec:
            raise ConfigError(f"{where}: empty list of values")
        if key in PROMPT_KEYS and not all(isinstance(v, str) and v.strip() for v in spec):
            raise ConfigError(f"{where}: expected a list of non-empty texts")
        if len({json.dumps(v, ensure_ascii=False) for v in spec}) != len(spec):
            raise ConfigError(f"{where}: a value is listed twice")
        for value in spec:
            _check_value(config, key, value, source)
        return Dimension(key, choices=tuple(spec))
    if key in PROMPT_KEYS:
        raise ConfigError(f"{where}: expected a list of texts (prompts are searched as categories)")
    if not isinstance(spec, dict) or not {"low", "high"} <= set(spec) or set(spec) - {"low", "high", "log"}:
        raise ConfigError(f"{where}: expected a list of values or a range {{low: A, high: B}} (optional log: true)")
    low, high, log = spec["low"], spec["high"], bool(spec.get("log", False))
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (low, high)):
        raise ConfigError(f"{where}: low and high must be numbers (got {low!r}, {high!r})")
    if low > high:
        raise ConfigError(f"{where}: empty range (low {low} > high {high})")
    if log and low <= 0:
        raise ConfigError(f"{where}: a log range needs low > 0 (got {low})")
    annotation = GenerationSettings.model_fields[key.split(".", 1)[1]].annotation
    integer = annotation is not float and isinstance(low, int) and isinstance(high, int)
    for value in (low, high):
        _check_value(config, key, value, source)
    return Dimension(key, low=low, high=high, integer=integer, log=log)


def _flatten(raw: dict[str, Any]) -> dict[str, Any]:
    """Dotted keys; a `generation:` / `prompt:` section's keys are dotted under it."""
    flat: dict[str, Any] = {}
    for key, value in raw.items():
        key = str(key)
        if key in ("generation", "prompt") and isinstance(value, dict):
            flat.update({f"{key}.{k}": v for k, v in value.items()})
        else:
            flat[key] = value
    return flat


def _finish(dimensions: list[Dimension], config: Config, source: str) -> Space:
    if not any(d.free for d in dimensions):
        raise ConfigError(f"{source}: no free parameter: every key has a single value, so there is nothing to search")
    keys = {d.key for d in dimensions}
    auto = config.generation.max_new_tokens == "auto" or "generation.max_new_tokens" in keys
    for key in sorted(keys & set(LENGTH_KEYS)):
        if not auto:
            raise ConfigError(
                f"{source}: {key} applies under generation.max_new_tokens=auto; the config has "
                f"max_new_tokens={config.generation.max_new_tokens}"
            )
        if not config.data.train or not Path(config.data.train).is_file():
            raise ConfigError(f"{source}: {key}: refitting the length rule needs data.train ({config.data.train})")
    return Space(tuple(dimensions), source)


def load_space(path: str | Path, config: Config) -> Space:
    path = Path(path)
    source = str(path)
    if not path.is_file():
        raise ConfigError(f"{source}: space file not found")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        raise ConfigError(f"{source}: not valid YAML: {str(error).splitlines()[0]}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping of keys to value lists or ranges")
    return _finish([_dimension(k, v, config, source) for k, v in _flatten(raw).items()], config, source)


def default_space(config: Config) -> Space:
    """The issue's space: what the published DialogSum-Korean gains came from."""
    dimensions = [
        Dimension("generation.num_beams", choices=(1, 2, 4, 6, 8)),
        Dimension("generation.length_penalty", low=0.3, high=1.5),
        Dimension("generation.repetition_penalty", low=1.0, high=1.3),
        Dimension("generation.no_repeat_ngram_size", choices=(0, 3, 4, 5, 6)),
    ]
    train = config.data.train
    if config.generation.max_new_tokens == "auto" and train and Path(train).is_file():
        dimensions.append(Dimension("generation.length_quantile", low=0.5, high=0.99))
    return _finish(dimensions, config, "default space")


def canonical(settings: dict[str, Any], config: Config) -> dict[str, Any]:
    """The settings that change the output under `config`: the length penalty without beams and the length rule's
    keys without `max_new_tokens: auto` do nothing, so two trials differing only there are the same trial."""
    merged = {**{k: _get(config, k) for k in settings}, **settings}
    beams = settings.get("generation.num_beams", config.generation.num_beams)
    tokens = settings.get("generation.max_new_tokens", config.generation.max_new_tokens)
    return {
        key: value
        for key, value in sorted(merged.items())
        if not (key == "generation.length_penalty" and beams == 1) and not (key in LENGTH_KEYS and tokens != "auto")
    }


def settings_hash(settings: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True, ensure_ascii=False).encode()).hexdigest()[:16]


def _get(config: Config, key: str) -> Any:
    section, name = key.split(".", 1)
    return getattr(getattr(config, section), name)


def apply_settings(config: Config, settings: dict[str, Any]) -> Config:
    """`config` with a trial's settings; a changed length setting drops the stored rule so it is refitted on
    data.train (length.py caches each fit)."""
    raw = config.to_dict()
    for key, value in settings.items():
        section, name = key.split(".", 1)
        raw[section][name] = value
    if any(k in LENGTH_KEYS and settings[k] != _get(config, k) for k in settings):
        raw["generation"]["length_rule"] = None
    return config_from_dict(raw, source="tune settings")


def grid_product(space: Space) -> list[dict[str, Any]]:
    """Every combination of a grid space (for tests and the report)."""
    grid = space.grid() or {}
    return [dict(zip(grid, values)) for values in itertools.product(*grid.values())]
