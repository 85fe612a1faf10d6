"""The run config: one YAML file, validated by a typed schema, overridable with `--set key=value`.

Defaults follow the baseline the project converged on (lr 2e-5, cosine, weight decay 0.1,
effective batch 64, warmup 0.1, non-reentrant gradient checkpointing).
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from dialsum.errors import ConfigError

DEFAULT_SYSTEM_PROMPT = "당신은 유능한 AI 어시스턴트입니다. 사용자의 질문에 대해 친절하게 답변해주세요."
DEFAULT_QUESTION = "위 {topic} 주제에 대한 대화를 요약해주세요."
DEFAULT_FORBIDDEN_SCRIPTS = ["Han", "Hiragana", "Katakana", "Cyrillic", "Thai", "Arabic", "Hebrew", "Greek", "Devanagari"]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(_Section):
    name_or_path: str = Field(description="HF hub id or local directory of the base model.")
    kind: Literal["causal", "seq2seq"] = "causal"
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2"] = "sdpa"
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"
    trust_remote_code: bool = False
    revision: str | None = None


class DataConfig(_Section):
    train: str | None = None
    dev: str | None = None
    test: str | None = None


class PromptConfig(_Section):
    system: str = DEFAULT_SYSTEM_PROMPT
    question: str = DEFAULT_QUESTION
    conversation_header: str = "[Conversation]"
    question_header: str = "[Question]"
    speaker_style: Literal["tag", "korean"] = Field(
        "tag", description="'tag' keeps '#Person1#'; 'korean' renders '화자1'."
    )
    default_topic: str = "대화"
    topic_separator: str = ", "


class TrainingConfig(_Section):
    learning_rate: float = Field(2e-5, gt=0)
    lr_scheduler_type: str = "cosine"
    weight_decay: float = Field(0.1, ge=0)
    per_device_train_batch_size: int = Field(8, ge=1)
    per_device_eval_batch_size: int = Field(8, ge=1)
    gradient_accumulation_steps: int = Field(8, ge=1)
    num_train_epochs: float = Field(3.0, gt=0)
    max_steps: int = Field(-1, description="> 0 overrides num_train_epochs.")
    warmup_ratio: float = Field(0.1, ge=0, le=1)
    max_length: int = Field(1024, ge=16)
    max_target_length: int = Field(256, ge=4, description="seq2seq only: summary token budget.")
    packing: bool = True
    gradient_checkpointing: bool = True
    max_grad_norm: float = Field(1.0, gt=0)
    seed: int = 42
    skip_too_long: bool = Field(False, description="Skip (and count) examples whose summary alone exceeds max_length.")
    eval_steps: int | None = Field(None, ge=1, description="Evaluate every N steps; None evaluates once per epoch.")
    save_steps: int | None = Field(None, ge=1, description="Checkpoint every N steps; None checkpoints once per epoch.")
    save_total_limit: int | None = Field(2, ge=1)
    bf16: Literal["auto", "true", "false"] = "auto"
    grad_norm_threshold: float = Field(1.5, gt=0)
    dataloader_num_workers: int = Field(0, ge=0)


class LoraConfig(_Section):
    enabled: bool = False
    r: int = Field(16, ge=1)
    alpha: int = Field(32, ge=1)
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: list[str] | Literal["all-linear"] = "all-linear"
    load_in_4bit: bool = False


class GenerationConfig(_Section):
    backend: Literal["hf", "vllm"] = "hf"
    batch_size: int = Field(8, ge=1)
    max_new_tokens: int | Literal["auto"] = Field(
        128, description="Token limit per summary; 'auto' gives each dialogue the limit of its length bucket from a "
        "rule fitted on the training data (dialsum.length), stored in generation.length_rule.")
    length_buckets: int = Field(
        5, ge=1, description="With max_new_tokens=auto: how many dialogue-length buckets (training-data quantiles).")
    length_quantile: float = Field(
        0.95, gt=0, le=1, description="With max_new_tokens=auto: a bucket's limit is this quantile of its training "
        "summaries' token counts (plus the stop token).")
    max_new_tokens_cap: int = Field(
        256, ge=1, description="With max_new_tokens=auto: the largest limit the rule may give, and the generation "
        "budget the prompt leaves room for.")
    length_rule: dict[str, Any] | None = Field(
        None, description="The fitted length rule (bucket edges in dialogue characters, per-bucket token limits); "
        "written by dialsum run when max_new_tokens=auto so the run's config.yaml reproduces its generation.")
    num_beams: int = Field(1, ge=1)
    do_sample: bool = False
    temperature: float = Field(1.0, gt=0)
    top_p: float = Field(1.0, gt=0, le=1)
    no_repeat_ngram_size: int = Field(0, ge=0)
    repetition_penalty: float = Field(1.0, gt=0)
    length_penalty: float = 1.0
    suppress_foreign_scripts: bool = True
    forbidden_scripts: list[str] = Field(default_factory=lambda: list(DEFAULT_FORBIDDEN_SCRIPTS))


class CleanupConfig(_Section):
    """Post-processing of every generated summary (dialsum.cleanup); the run report counts what each step changed."""

    normalize_tags: bool = Field(
        True, description="Rewrite '#Person 1#', '# Person1 #', 'Person1:' (and masks such as '# PhoneNumber #') "
        "to the references' '#Person1#' / '#PhoneNumber#' spelling, which ROUGE matches token for token.")
    remove_think: bool = Field(
        True, description="Remove <think>...</think> blocks (Qwen3 writes them even with thinking off), an unclosed "
        "<think> and stray think tags.")
    remove_artifacts: bool = Field(
        True, description="Remove unused/reserved vocabulary entries such as <unused68> and U+FFFD, which decoding "
        "can leave behind.")
    remove_foreign_chars: bool = Field(
        False, description="Remove stray characters of generation.forbidden_scripts (e.g. Han). Off by default: "
        "with suppression on none can appear, and otherwise the foreign-script rate should show them.")
    drop_unfinished_sentence: bool = Field(
        False, description="Cut a trailing fragment after the last full stop (a generation cut off by "
        "max_new_tokens); a tail ending in -다/-요 is kept.")


def token_budget(generation: "GenerationConfig") -> int:
    """The most tokens a summary may get: max_new_tokens, or with 'auto' the cap (what the prompt leaves room for)."""
    return generation.max_new_tokens_cap if generation.max_new_tokens == "auto" else generation.max_new_tokens


class EvaluationConfig(_Section):
    tokenizer: Literal["kiwi", "mecab", "whitespace"] = "kiwi"
    rouge_during_training: bool = Field(False, description="Generate and score a dev subset at each evaluation.")
    rouge_subset: int = Field(32, ge=1)
    select_best_by: Literal["eval_loss", "eval_rouge_sum"] = "eval_loss"


class LoggingConfig(_Section):
    steps: int = Field(10, ge=1)
    report_to: list[Literal["wandb", "tensorboard"]] = Field(default_factory=list)
    output_root: str = "runs"


class Config(_Section):
    model: ModelConfig
    data: DataConfig = Field(default_factory=DataConfig)
    prompt: PromptConfig = Field(default_factory=PromptConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    lora: LoraConfig = Field(default_factory=LoraConfig)
    generation: GenerationConfig = Field(default_factory=GenerationConfig)
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)
    cleanup: CleanupConfig = Field(
        default_factory=CleanupConfig, description="Summary clean-up after decoding, one switch per step.")
    logging: LoggingConfig = Field(default_factory=LoggingConfig)

    @model_validator(mode="after")
    def _consistent(self) -> "Config":
        if self.evaluation.select_best_by == "eval_rouge_sum" and not self.evaluation.rouge_during_training:
            raise ValueError("evaluation.select_best_by=eval_rouge_sum needs evaluation.rouge_during_training=true")
        return self

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


def _valid_keys(model_cls: type[BaseModel] = Config, prefix: str = "") -> list[str]:
    keys = []
    for name, field in model_cls.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            keys.extend(_valid_keys(annotation, f"{prefix}{name}."))
        else:
            keys.append(f"{prefix}{name}")
    return keys


def _unknown_key_error(key: str, source: str) -> ConfigError:
    close = difflib.get_close_matches(key, _valid_keys(), n=1, cutoff=0.6)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    return ConfigError(f"{source}: unknown config key '{key}'{hint}")


def _apply_override(raw: dict[str, Any], override: str) -> None:
    if "=" not in override:
        raise ConfigError(f"--set '{override}': expected key=value, e.g. training.learning_rate=1e-5")
    key, _, text = override.partition("=")
    key = key.strip()
    if key not in _valid_keys():
        raise _unknown_key_error(key, f"--set {key}")
    try:
        value = yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError:
        value = text
    node = raw
    *parents, leaf = key.split(".")
    for part in parents:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    node[leaf] = value


def _format_validation_error(error: ValidationError, source: str) -> ConfigError:
    first = error.errors()[0]
    key = ".".join(str(p) for p in first["loc"])
    if not key:  # a cross-field rule: its message names the keys
        return ConfigError(f"{source}: {first['msg'].removeprefix('Value error, ')}")
    if first["type"] == "extra_forbidden":
        return _unknown_key_error(key, source)
    if first["type"] == "missing":
        return ConfigError(f"{source}: missing required config key '{key}'")
    return ConfigError(f"{source}: config key '{key}': {first['msg']} (got {first.get('input')!r})")


def config_from_dict(raw: dict[str, Any], overrides: list[str] | None = None, source: str = "config") -> Config:
    raw = yaml.safe_load(yaml.safe_dump(raw))  # deep copy, plain types
    for override in overrides or []:
        _apply_override(raw, override)
    try:
        return Config.model_validate(raw)
    except ValidationError as error:
        raise _format_validation_error(error, source) from None


def load_config(path: str | Path, overrides: list[str] | None = None) -> Config:
    """Read a YAML run config, apply `key=value` overrides, validate. Relative data paths stay as written."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        raise ConfigError(f"{path}: not valid YAML: {str(error).splitlines()[0]}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level")
    return config_from_dict(raw, overrides, source=str(path))


def save_config(config: Config, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(config.to_dict(), allow_unicode=True, sort_keys=False), encoding="utf-8")
