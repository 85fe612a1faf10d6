"""The run config: one YAML file, validated by a typed schema, overridable with `--set key=value`.

Defaults follow the baseline the project converged on (lr 2e-5, cosine, weight decay 0.1,
effective batch 64, warmup 0.1, non-reentrant gradient checkpointing).
"""

from __future__ import annotations

import difflib
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from dialsum.errors import ConfigError, DialsumError
from dialsum.scripts import DEFAULT_FORBIDDEN_SCRIPTS, script_key

DEFAULT_SYSTEM_PROMPT = "당신은 유능한 AI 어시스턴트입니다. 사용자의 질문에 대해 친절하게 답변해주세요."
DEFAULT_QUESTION = "위 {topic} 주제에 대한 대화를 요약해주세요."
DEFAULT_WARMUP_RATIO = 0.1  # training.warmup_ratio when neither it nor training.warmup_steps is set
# transformers' SchedulerType values that work without extra lr_scheduler_kwargs (which dialsum does not expose)
LR_SCHEDULERS = [
    "linear",
    "cosine",
    "cosine_with_restarts",
    "polynomial",
    "constant",
    "constant_with_warmup",
    "inverse_sqrt",
]
ScorerTokenizer = Literal["kiwi", "mecab", "whitespace"]  # morpheme analyzers of the 'kiwi' scheme (metrics.py)


def _admits_bool(annotation: Any) -> bool:
    from typing import get_args

    return annotation is bool or any(_admits_bool(arg) for arg in get_args(annotation))


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_for_a_number(cls, value: Any, info) -> Any:
        """`per_device_train_batch_size: true` is surely a mistake; pydantic's lax mode would read it as 1."""
        annotation = cls.model_fields[info.field_name].annotation
        if isinstance(value, bool) and not _admits_bool(annotation):
            kind = {int: "an integer", float: "a number", str: "a text"}.get(annotation, "a value of its type")
            raise ValueError(f"expected {kind}, not true/false")
        return value


class ModelSettings(_Section):
    name_or_path: str = Field(description="HF hub id or local directory of the base model.")
    kind: Literal["causal", "seq2seq"] = Field(
        "causal",
        description="'causal': decoder-only (Llama, Qwen) trained with TRL's SFTTrainer; 'seq2seq': "
        "encoder-decoder (koBART) trained with Seq2SeqTrainer.",
    )
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2"] = Field(
        "sdpa", description="Attention kernel. Packed samples stay isolated on all three (see README, Packing)."
    )
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = Field(
        "auto", description="Dtype the weights load in; 'auto' follows the training precision policy (see README)."
    )
    trust_remote_code: bool = Field(
        False, description="Run Python code shipped with a hub model. Off unless you trust the repository."
    )
    revision: str | None = Field(None, description="Hub branch, tag or commit to load; None takes the default branch.")
    license: str | None = Field(
        None,
        description="License of an export's model card (`dialsum export`), normally the base model's ('llama3.2', "
        "'apache-2.0'); None writes 'other'.",
    )


class DataSettings(_Section):
    train: str | list[str] | None = Field(
        None,
        description="Training file (competition CSV or Korean_DCS JSON/JSONL), or a list of them read in order, e.g. "
        "[train.csv, aug.csv]; a file with a `source` column (`dialsum augment`) is checked against dev and test "
        "for leaks before training starts.",
    )
    dev: str | None = Field(
        None, description="Dev file with reference summaries: eval loss, checkpoint selection and dev scores."
    )
    test: str | None = Field(
        None, description="File to predict for the submission (`dialsum run`); needs no summaries."
    )
    strip_whitespace: bool = Field(
        True,
        description="Strip whitespace around speakers, utterances, subject keywords and summaries as they are "
        "read. On keeps the DialogSum-CSV behaviour; the Korean_DCS presets turn it off so prompts and targets "
        "are the source text token for token, as the 2024 baseline reads them.",
    )
    hub_datasets: list[str] = Field(
        default_factory=list,
        description="Hub dataset ids the data files come from, for the `datasets` of an export's model card.",
    )


class PromptSettings(_Section):
    system: str = Field(DEFAULT_SYSTEM_PROMPT, description="System message of the chat prompt (decoder-only models).")
    question: str = Field(
        DEFAULT_QUESTION, description="The request after the conversation; {topic} is replaced by the dialogue's topic."
    )
    conversation_header: str = Field(
        "[Conversation]", description="Line that opens the conversation block of the prompt."
    )
    question_header: str = Field("[Question]", description="Line that opens the question block of the prompt.")
    speaker_style: Literal["tag", "korean", "prefixed"] = Field(
        "tag",
        description="'tag' keeps '#Person1#'; 'korean' renders '화자1'; 'prefixed' writes '화자' before the "
        "source id ('화자SD2000001', the Korean_DCS 2024 baseline's prompt).",
    )
    default_topic: str = Field(
        "대화", description="Topic written into the question when a dialogue has none (or topics are off)."
    )
    topic: Literal["auto", "always", "never"] = Field(
        "auto",
        description="Whether the question names each dialogue's topic. 'auto' (default): only when every split the "
        "run trains on and predicts carries topics (the competition's test.csv has none, so training, dev scoring "
        "and test prompts then all use default_topic); 'always': the topic where a dialogue has one (a split "
        "without topics is reported as out of distribution); 'never': default_topic everywhere.",
    )


class TrainingSettings(_Section):
    learning_rate: float = Field(2e-5, gt=0, description="Peak learning rate (AdamW), reached after warmup.")
    lr_scheduler_type: str = Field(
        "cosine",
        description="Learning-rate schedule after warmup, one of transformers' schedulers: "
        f"{', '.join(LR_SCHEDULERS)}.",
    )
    weight_decay: float = Field(0.1, ge=0, description="AdamW weight decay.")
    per_device_train_batch_size: int = Field(
        8, ge=1, description="Examples per micro-batch on each process (see packing for what a packed batch counts)."
    )
    per_device_eval_batch_size: int = Field(8, ge=1, description="Examples per batch for dev loss.")
    gradient_accumulation_steps: int = Field(
        8, ge=1, description="Micro-batches per optimizer step; effective batch = this x per-device batch x processes."
    )
    num_train_epochs: float = Field(3.0, gt=0, description="Passes over the training data (fractions allowed).")
    max_steps: int = Field(-1, description="> 0 overrides num_train_epochs.")
    warmup_ratio: float | None = Field(
        None,
        ge=0,
        le=1,
        description="Fraction of all optimizer steps spent warming the learning rate up linearly (1.0: all of "
        f"them); None: {DEFAULT_WARMUP_RATIO} unless warmup_steps is set. Exclusive with warmup_steps.",
    )
    warmup_steps: int | None = Field(
        None,
        ge=0,
        description="Warm the learning rate up over exactly this many optimizer steps (the Korean_DCS baseline: "
        "20) instead of a ratio; None: use warmup_ratio. Exclusive with warmup_ratio.",
    )
    max_length: int = Field(
        1024,
        ge=16,
        description="Token budget of prompt + summary (decoder-only) or of the source (seq2seq); a longer "
        "dialogue loses turns from its end, never its summary.",
    )
    max_target_length: int = Field(256, ge=4, description="seq2seq only: summary token budget.")
    packing: bool = Field(
        True, description="Pack several examples into each row of max_length, isolated from each other (decoder-only)."
    )
    packing_batch_unit: Literal["examples", "rows"] = Field(
        "examples",
        description="With packing, what per_device_train_batch_size counts. 'examples' keeps the recipe: each "
        "micro-batch holds that many examples on average (packed into fewer rows), so an optimizer step sees the "
        "configured effective batch of examples. 'rows' counts packed rows of max_length (~2-3 examples each on "
        "the dialogue data): more examples per step and proportionally fewer optimizer steps.",
    )
    gradient_checkpointing: bool = Field(
        True, description="Recompute activations in the backward pass (non-reentrant): less memory, ~30% more compute."
    )
    max_grad_norm: float = Field(1.0, gt=0, description="Gradient clipping norm.")
    seed: int = Field(42, description="Seed for weights init of new layers, data order, dropout and sampling.")
    skip_too_long: bool = Field(False, description="Skip (and count) examples whose summary alone exceeds max_length.")
    eval_steps: int | None = Field(None, ge=1, description="Evaluate every N steps; None evaluates once per epoch.")
    save_steps: int | None = Field(None, ge=1, description="Checkpoint every N steps; None checkpoints once per epoch.")
    save_total_limit: int | None = Field(
        2, ge=1, description="Checkpoints kept on disk (the best one is always kept); None keeps all."
    )
    bf16: Literal["auto", "true", "false"] = Field(
        "auto",
        description="bf16 autocast for the forward/backward pass (weights stay fp32 for full fine-tuning); "
        "'auto' uses it on GPUs that support it. YAML true/false are accepted.",
    )
    grad_norm_threshold: float = Field(
        1.5,
        gt=0,
        description="A step whose grad norm (before clipping) exceeds this is a spike: grad_norm_spikes.jsonl.",
    )
    dataloader_num_workers: int = Field(0, ge=0, description="Worker processes for the training data loader.")

    def effective_warmup_ratio(self) -> float:
        """The warmup ratio in force: warmup_ratio, else 0 when warmup_steps counts steps, else the default."""
        if self.warmup_ratio is not None:
            return self.warmup_ratio
        return 0.0 if self.warmup_steps is not None else DEFAULT_WARMUP_RATIO

    @field_validator("bf16", mode="before")
    @classmethod
    def _bool_to_text(cls, value: Any) -> Any:
        """YAML and --set turn `true` into a boolean; the field's values are the words."""
        return str(value).lower() if isinstance(value, bool) else value

    @field_validator("lr_scheduler_type")
    @classmethod
    def _known_scheduler(cls, value: str) -> str:
        if value not in LR_SCHEDULERS:
            close = difflib.get_close_matches(value, LR_SCHEDULERS, n=1, cutoff=0.5)
            hint = f"did you mean '{close[0]}'? " if close else ""
            raise ValueError(f"unknown scheduler; {hint}expected one of {', '.join(LR_SCHEDULERS)}")
        return value


class LoraSettings(_Section):
    enabled: bool = Field(False, description="Train LoRA adapters on a frozen base instead of every weight.")
    r: int = Field(16, ge=1, description="LoRA rank.")
    alpha: int = Field(32, ge=1, description="LoRA scaling numerator (the update is scaled by alpha / r).")
    dropout: float = Field(0.05, ge=0, lt=1, description="Dropout on the LoRA input.")
    target_modules: list[str] | Literal["all-linear"] = Field(
        "all-linear", description="Module names to adapt, or 'all-linear' for every linear layer but the LM head."
    )
    load_in_4bit: bool = Field(
        False, description="QLoRA: load the frozen base in 4-bit NF4 (needs CUDA and bitsandbytes); needs enabled."
    )


class GenerationSettings(_Section):
    backend: Literal["hf", "vllm"] = Field(
        "hf", description="'hf': transformers generate with full suppression; 'vllm': faster on CUDA, static ban only."
    )
    batch_size: int = Field(8, ge=1, description="Dialogues generated together (sorted by length).")
    max_new_tokens: int | Literal["auto"] = Field(
        128,
        description="Token limit per summary; 'auto' gives each dialogue the limit of its length bucket from a "
        "rule fitted on the training data (dialsum.length), stored in generation.length_rule.",
    )
    length_buckets: int = Field(
        5, ge=1, description="With max_new_tokens=auto: how many dialogue-length buckets (training-data quantiles)."
    )
    length_quantile: float = Field(
        0.95,
        gt=0,
        le=1,
        description="With max_new_tokens=auto: a bucket's limit is this quantile of its training "
        "summaries' token counts (plus the stop token).",
    )
    max_new_tokens_cap: int = Field(
        256,
        ge=1,
        description="With max_new_tokens=auto: the largest limit the rule may give, and the generation "
        "budget the prompt leaves room for.",
    )
    length_rule: dict[str, Any] | None = Field(
        None,
        description="The fitted length rule (bucket edges in dialogue characters, per-bucket token limits); "
        "written by dialsum train when max_new_tokens=auto so the run's config.yaml reproduces its generation.",
    )
    num_beams: int = Field(1, ge=1, description="Beam width; 1 is greedy (or sampling with do_sample).")
    do_sample: bool = Field(False, description="Sample instead of greedy/beam search; off means deterministic output.")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature (do_sample only).")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling mass (do_sample only).")
    no_repeat_ngram_size: int = Field(0, ge=0, description="Forbid repeating any n-gram of this size (0: off).")
    repetition_penalty: float = Field(1.0, gt=0, description="Penalty on tokens already generated (1.0: none).")
    length_penalty: float = Field(
        1.0, description="Beam search only: exponent on length in beam scores; < 1 favours shorter summaries."
    )
    suppress_foreign_scripts: bool = Field(
        True, description="Make characters of forbidden_scripts impossible to generate (byte fragments included)."
    )
    forbidden_scripts: list[str] = Field(
        default_factory=lambda: list(DEFAULT_FORBIDDEN_SCRIPTS),
        description="Scripts that never belong in a Korean summary (names from dialsum.scripts.SCRIPT_RANGES).",
    )

    @field_validator("forbidden_scripts")
    @classmethod
    def _known_scripts(cls, value: list[str]) -> list[str]:
        try:  # checked here, so `run` never finds an unknown name after training
            script_key(value)
        except DialsumError as error:
            raise ValueError(str(error)) from None
        return value


class CleanupSettings(_Section):
    """Post-processing of every generated summary (dialsum.cleanup); the run report counts what each step changed."""

    normalize_tags: bool = Field(
        True,
        description="Rewrite '#Person 1#', '# Person1 #', 'Person1:' (and masks such as '# PhoneNumber #') "
        "to the references' '#Person1#' / '#PhoneNumber#' spelling, which ROUGE matches token for token.",
    )
    remove_think: bool = Field(
        True,
        description="Remove <think>...</think> blocks (Qwen3 writes them even with thinking off), an unclosed "
        "<think> and stray think tags.",
    )
    remove_artifacts: bool = Field(
        True,
        description="Remove unused/reserved vocabulary entries such as <unused68>, U+FFFD and control "
        "characters, which decoding can leave behind.",
    )
    remove_foreign_chars: bool = Field(
        False,
        description="Remove stray characters of generation.forbidden_scripts (e.g. Han). Off by default: "
        "with suppression on none can appear, and otherwise the foreign-script rate should show them.",
    )
    drop_unfinished_sentence: bool = Field(
        False,
        description="Cut a trailing fragment after the last full stop (a generation cut off by "
        "max_new_tokens); a tail ending in -다/-요 is kept.",
    )


def token_budget(generation: "GenerationSettings") -> int:
    """The most tokens a summary may get: max_new_tokens, or with 'auto' the cap (what the prompt leaves room for)."""
    return generation.max_new_tokens_cap if generation.max_new_tokens == "auto" else generation.max_new_tokens


class EvaluationSettings(_Section):
    tokenizer: ScorerTokenizer = Field(
        "kiwi", description="Morpheme analyzer for scheme 'kiwi' (whitespace: for English data only)."
    )
    scheme: Literal["kiwi", "dialogsum", "dcs"] = Field(
        "kiwi",
        description="How dev scores are computed, so they match a leaderboard: 'kiwi' (rouge-score on Kiwi forms, "
        "dialsum's own scale), 'dialogsum' (DialogSum-Korean: Mecab + the rouge 1.0.1 arithmetic, ROUGE sum), "
        "'dcs' (Korean_DCS: mean of ROUGE-1, BERTScore, BLEURT-20). 'tokenizer' applies to 'kiwi' only.",
    )
    bertscore_model: str = Field(
        "bert-base-multilingual-cased",
        description="Scheme 'dcs': the BERTScore model (hub id or local copy); loaded at scoring time.",
    )
    bertscore_layers: int | None = Field(
        None,
        ge=1,
        description="Scheme 'dcs': the BERTScore layer; None takes bert-score's default for a known hub id "
        "(9 for bert-base-multilingual-cased); a local copy needs it set.",
    )
    rouge_during_training: bool = Field(False, description="Generate and score a dev subset at each evaluation.")
    rouge_subset: int = Field(
        32, ge=1, description="Dev dialogues generated at each evaluation when rouge_during_training."
    )
    select_best_by: Literal["eval_loss", "eval_rouge_sum", "eval_final_score", "eval_rouge1"] = Field(
        "eval_loss",
        description="Metric that picks the final model among evaluated checkpoints (loss: lower is better; the "
        "others higher, need rouge_during_training; scheme dcs logs only eval_rouge1 during training).",
    )


class LoggingSettings(_Section):
    steps: int = Field(10, ge=1, description="Log loss, grad norm, LR and throughput every N optimizer steps.")
    report_to: list[Literal["wandb", "tensorboard"]] = Field(
        default_factory=list, description="Experiment trackers besides metrics.jsonl (each needs its package)."
    )
    output_root: str = Field("runs", description="Where new run directories are created (runs/<config>-<time>).")


class AugmentSettings(_Section):
    """`dialsum augment`: the teacher endpoint, sampling, the request loop, validation thresholds and prices."""

    endpoint: str | None = Field(
        None, description="Base URL of an OpenAI-compatible API, e.g. https://api.upstage.ai/v1 (--endpoint wins)."
    )
    model: str | None = Field(None, description="Model name sent with each request, e.g. solar-pro2 (--model wins).")
    api_key_env: str = Field(
        "UPSTAGE_API_KEY",
        description="Environment variable holding the API key (the key itself is never written anywhere); "
        "--api-key-env wins.",
    )
    recipe_dir: str = Field(
        "configs/augment", description="Folder of recipe templates (<recipe>.yaml); --recipe may also be a path."
    )
    temperature: float = Field(0.7, ge=0, le=2, description="Sampling temperature sent with each request.")
    top_p: float = Field(0.95, gt=0, le=1, description="Nucleus sampling mass sent with each request.")
    max_tokens: int = Field(2048, ge=1, description="Completion token limit of each request.")
    seed: int = Field(42, description="Seed of the source sample, topic draws, few-shot examples and speaker swaps.")
    concurrency: int = Field(4, ge=1, description="Requests in flight at once (--concurrency wins).")
    rpm: float | None = Field(
        60, gt=0, description="Requests started per minute, retries included; None: no limit (--rpm wins)."
    )
    timeout_s: float = Field(120, gt=0, description="Seconds one request may take before it counts as timed out.")
    max_retries: int = Field(
        6, ge=0, description="Retries of one request after a 429, a 5xx, a timeout or an unreadable answer."
    )
    backoff_s: float = Field(
        1.0, gt=0, description="First retry delay; doubled per retry, with jitter, capped at backoff_max_s."
    )
    backoff_max_s: float = Field(60, gt=0, description="Longest delay between retries (a Retry-After is capped too).")
    price_input_per_1m: float = Field(0.0, ge=0, description="Price of 1M prompt tokens, for the cost estimate.")
    price_output_per_1m: float = Field(0.0, ge=0, description="Price of 1M completion tokens, for the cost estimate.")
    currency: str = Field("USD", description="Currency the prices are in (printed with the cost estimate).")
    min_length_ratio: float = Field(
        0.5, gt=0, description="An answer shorter than this times its source (dialogue or summary) is rejected."
    )
    max_length_ratio: float = Field(
        2.0, gt=0, description="An answer longer than this times its source (dialogue or summary) is rejected."
    )
    ngram: int = Field(4, ge=1, description="Character n-gram size of the near-duplicate similarity (Jaccard).")
    near_duplicate_threshold: float = Field(
        0.5,
        gt=0,
        le=1,
        description="A dialogue whose n-gram similarity to any dev or test dialogue reaches this is a leak: rejected "
        "by augment, refused by train.",
    )
    source_copy_threshold: float = Field(
        0.9,
        gt=0,
        le=1,
        description="A paraphrase or synthetic dialogue this similar to its own source (or a few-shot example), "
        "or a rewritten summary this similar to the reference, is a copy: rejected.",
    )
    few_shot: int = Field(3, ge=0, description="synthetic: real training examples shown in the prompt as style guides.")

    @model_validator(mode="after")
    def _ratios(self) -> "AugmentSettings":
        if self.min_length_ratio >= self.max_length_ratio:
            raise ValueError("augment.min_length_ratio must be below augment.max_length_ratio")
        return self


class Config(_Section):
    model: ModelSettings = Field(description="Which model to fine-tune and how to load it.")
    data: DataSettings = Field(default_factory=DataSettings, description="Train, dev and test files.")
    prompt: PromptSettings = Field(default_factory=PromptSettings, description="How a dialogue becomes a prompt.")
    training: TrainingSettings = Field(default_factory=TrainingSettings, description="Optimizer, schedule, batching.")
    lora: LoraSettings = Field(default_factory=LoraSettings, description="LoRA / QLoRA adapters.")
    generation: GenerationSettings = Field(
        default_factory=GenerationSettings,
        description="Decoding settings; a checkpoint's own defaults never override them.",
    )
    evaluation: EvaluationSettings = Field(
        default_factory=EvaluationSettings, description="How dev scores are computed."
    )
    cleanup: CleanupSettings = Field(
        default_factory=CleanupSettings, description="Summary clean-up after decoding, one switch per step."
    )
    logging: LoggingSettings = Field(default_factory=LoggingSettings, description="What is logged and where runs go.")
    augment: AugmentSettings = Field(
        default_factory=AugmentSettings, description="`dialsum augment`: teacher endpoint, request loop, validation."
    )

    @model_validator(mode="after")
    def _consistent(self) -> "Config":
        best = self.evaluation.select_best_by
        if best != "eval_loss" and not self.evaluation.rouge_during_training:
            raise ValueError(f"evaluation.select_best_by={best} needs evaluation.rouge_during_training=true")
        if self.evaluation.scheme == "dcs" and best not in ("eval_loss", "eval_rouge1"):
            raise ValueError(
                f"evaluation.select_best_by={best}: scheme dcs logs only eval_rouge1 during training (BERTScore and "
                "BLEURT are left out there); use eval_rouge1 or eval_loss"
            )
        if self.evaluation.scheme != "kiwi" and self.evaluation.tokenizer != "kiwi":
            raise ValueError(
                f"evaluation.tokenizer={self.evaluation.tokenizer} applies to evaluation.scheme=kiwi only; "
                f"scheme {self.evaluation.scheme} fixes its own analyzer (Mecab)"
            )
        t = self.training
        if t.warmup_ratio is not None and t.warmup_steps is not None:
            raise ValueError(
                f"training.warmup_ratio={t.warmup_ratio} and training.warmup_steps={t.warmup_steps} are exclusive: "
                "set one of them"
            )
        if self.data.dev and t.save_steps is not None and t.save_steps != t.eval_steps:
            # The best checkpoint must exist on disk: the Trainer can only reload a checkpoint saved at an evaluation.
            every = f"every {t.eval_steps} steps" if t.eval_steps else "once per epoch (training.eval_steps unset)"
            raise ValueError(
                f"training.save_steps={t.save_steps} but dev is evaluated {every}: the best checkpoint is selected at "
                "an evaluation and must be saved there; set training.save_steps equal to training.eval_steps or leave "
                "it unset"
            )
        return self

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


def _type_name(annotation: Any) -> str:
    """A field's type as a user reads it: `int | None`, `'auto' | 'true' | 'false'`, `list[str]`."""
    import types
    import typing

    origin = typing.get_origin(annotation)
    if origin is Literal:
        return " | ".join(repr(value) for value in typing.get_args(annotation))
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(arg) for arg in typing.get_args(annotation))
    if origin is not None:
        args = ", ".join(_type_name(arg) for arg in typing.get_args(annotation))
        return f"{getattr(origin, '__name__', str(origin))}[{args}]"
    return "None" if annotation is type(None) else getattr(annotation, "__name__", str(annotation))


def config_fields(model_cls: type[BaseModel] = Config, prefix: str = "") -> list[dict[str, str]]:
    """Every settable key in schema order with its type, default and description: the one source of
    `dialsum config-keys`, the README's config reference and the unknown-key suggestions."""
    rows = []
    for name, field in model_cls.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            rows.extend(config_fields(annotation, f"{prefix}{name}."))
            continue
        if field.is_required():
            default = "(required)"
        else:
            default = json.dumps(field.get_default(call_default_factory=True), ensure_ascii=False)
        rows.append(
            {
                "key": f"{prefix}{name}",
                "type": _type_name(annotation),
                "default": default,
                "description": field.description or "",
            }
        )
    return rows


def config_reference_markdown(rows: list[dict[str, str]] | None = None) -> str:
    """The config reference as a Markdown table (README's "Config reference" is this, checked by a test)."""
    lines = ["| key | type | default | description |", "| --- | --- | --- | --- |"]
    for row in config_fields() if rows is None else rows:
        cells = [f"`{row['key']}`", row["type"], f"`{row['default']}`", row["description"]]
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    return "\n".join(lines) + "\n"


def _valid_keys() -> list[str]:
    return [row["key"] for row in config_fields()]


def _unknown_key_error(key: str, source: str) -> ConfigError:
    """Names the nearest valid key: an abbreviation of a key of the same section first ('training.lr' ->
    'training.learning_rate', 'training.wd' -> 'training.weight_decay'), else the closest spelling."""
    keys = _valid_keys()
    section, _, leaf = key.rpartition(".")
    initials = [
        k
        for k in keys
        if k.rpartition(".")[0] == section
        and "".join(word[:1] for word in k.rpartition(".")[2].split("_")) == leaf.lower()
    ]
    close = initials[:1] or difflib.get_close_matches(key, keys, n=1, cutoff=0.6)
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
    for depth, part in enumerate(parents):
        if part in node and not isinstance(node[part], dict):  # `training: 5`: never silently replaced
            section = ".".join(parents[: depth + 1])
            raise ConfigError(f"--set {key}: '{section}' is {node[part]!r} in the config, not a section of keys")
        node = node.setdefault(part, {})
    node[leaf] = value


def _format_validation_error(error: ValidationError, source: str, overridden: tuple[str, ...] = ()) -> ConfigError:
    errors = error.errors()
    first = errors[0]
    valid = set(_valid_keys())
    loc = [str(p) for p in first["loc"]]
    # a union's branches add their own names to the location ('max_new_tokens.int'): the key is the field
    depth = next((n for n in range(len(loc), 0, -1) if ".".join(loc[:n]) in valid), len(loc))
    key = ".".join(loc[:depth])
    from_set = any(key == k or key.startswith(k + ".") for k in overridden)  # the command line, not the file
    if not key:  # a cross-field rule: its message names the keys
        return ConfigError(f"{source}: {first['msg'].removeprefix('Value error, ')}")
    if first["type"] == "extra_forbidden":
        return _unknown_key_error(key, source)
    if first["type"] == "missing":
        return ConfigError(f"{source}: missing required config key '{key}'")
    branches = [e["msg"] for e in errors if ".".join(str(p) for p in e["loc"][:depth]) == key]
    message = "; or ".join(dict.fromkeys(branches)) if depth < len(loc) else first["msg"]
    message = message.removeprefix("Value error, ")
    where = f"--set {key}" if from_set else f"{source}: config key '{key}'"
    return ConfigError(f"{where}: {message} (got {first.get('input')!r})")


def config_from_dict(raw: dict[str, Any], overrides: list[str] | None = None, source: str = "config") -> Config:
    raw = yaml.safe_load(yaml.safe_dump(raw))  # deep copy, plain types
    for override in overrides or []:
        _apply_override(raw, override)
    try:
        return Config.model_validate(raw)
    except ValidationError as error:
        overridden = tuple(o.partition("=")[0].strip() for o in overrides or [])
        raise _format_validation_error(error, source, overridden) from None


class _StrictLoader(yaml.SafeLoader):
    """safe_load that refuses a key given twice in one mapping (PyYAML keeps the last silently: `max_steps: 4`
    then `max_steps: 400` trained 400 steps, and a second `training:` section dropped the first entirely)."""

    def construct_mapping(self, node, deep=False):
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key '{key}' at line {line} (first given at line {seen[key]})"
                )
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


def _yaml_problem(error: yaml.YAMLError) -> str:
    """One line: where (line, column), and what, naming a tab as a tab."""
    mark = getattr(error, "problem_mark", None)
    problem = getattr(error, "problem", None) or str(error).splitlines()[0]
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    if "'\\t'" in problem or "\t" in problem:
        problem = "a tab character; YAML indents with spaces only"
    return f"not valid YAML: {where}{problem}"


def _read_yaml(path: Path) -> dict[str, Any]:
    if path.is_dir():
        raise ConfigError(f"{path}: is a directory, not a YAML config file")
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        raw = yaml.load(path.read_text(encoding="utf-8"), Loader=_StrictLoader) or {}
    except UnicodeDecodeError as error:
        raise ConfigError(f"{path}: not UTF-8 text ({error.reason} at byte {error.start})") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: {_yaml_problem(error)}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level")
    return raw


def _leaves(raw: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """(dotted key, value) of every setting in a nested mapping; a key the schema knows is a leaf even when its value
    is a mapping (generation.length_rule)."""
    leaves = []
    for key, value in raw.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and dotted not in _valid_keys():
            leaves.extend(_leaves(value, f"{dotted}."))
        else:
            leaves.append((dotted, value))
    return leaves


def fragment_overrides(path: str | Path) -> list[str] | None:
    """A config fragment's settings as `key=value` overrides, or None for a full config. A fragment is a file with a
    `base:` key or without a `model` section, e.g. `dialsum tune`'s best.yaml: `predict --config` applies it over the
    model's own config, as --set would."""
    path = Path(path)
    raw = _read_yaml(path)
    if "model" in raw and "base" not in raw:
        return None
    raw.pop("base", None)
    overrides = [f"{key}={json.dumps(value, ensure_ascii=False)}" for key, value in _leaves(raw)]
    for override in overrides:  # an unknown key names the file
        if override.partition("=")[0] not in _valid_keys():
            raise _unknown_key_error(override.partition("=")[0], str(path))
    return overrides


def load_config(path: str | Path, overrides: list[str] | None = None) -> Config:
    """Read a YAML run config, apply `key=value` overrides, validate. Relative data paths stay as written.

    A `base: OTHER.yaml` key (relative to this file) reads OTHER first and applies this file's keys over it, so a
    fragment such as tune's best.yaml is a whole config for `dialsum run`."""
    path = Path(path)
    raw = _read_yaml(path)
    seen = [path.resolve()]
    while "base" in raw:
        base = path.parent / str(raw.pop("base"))
        if base.resolve() in seen:
            raise ConfigError(f"{path}: base {base} includes itself")
        seen.append(base.resolve())
        merged = _read_yaml(base)
        for key, value in _leaves(raw):
            *parents, leaf = key.split(".")
            node = merged
            for part in parents:
                if not isinstance(node.get(part), dict):
                    node[part] = {}
                node = node[part]
            node[leaf] = value
        raw, path = merged, base
    return config_from_dict(raw, overrides, source=str(seen[0]))


def save_config(config: Config, path: str | Path) -> None:
    from dialsum.writer import write_text

    write_text(path, yaml.safe_dump(config.to_dict(), allow_unicode=True, sort_keys=False))
