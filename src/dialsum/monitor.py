"""What the trainer reports while it trains: real vs processed tokens and throughput, grad-norm spikes, dev
ROUGE at each evaluation, every log line in metrics.jsonl, warmup as a true ratio, and the configured logging
/ eval / save steps kept on resume (mixed into TRL's SFTTrainer or Seq2SeqTrainer by `train.build_trainer`); and
at the end, the run's summary (summary.json) read off the trainer and metrics.jsonl.
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from dialsum.config import Config
from dialsum.data import Dialogue
from dialsum.encode import EncodeStats
from dialsum.models import PRECISION_POLICY
from dialsum.packing import (
    EXAMPLES_KEY,
    REAL_TOKENS_KEY,
    PackedBatchCollator,
    example_budget_note,
    packing_layout,
    pop_batch_meta,
)
from dialsum.rundir import METRICS_FILE, SPIKES_FILE, read_jsonl
from dialsum.writer import append_line


@dataclass
class TokenCounts:
    real: int = 0  # tokens that are not padding
    processed: int = 0  # every position the model computed
    examples: int = 0  # training examples (a packed row holds several)


def count_tokens(inputs: dict, meta: dict | None = None) -> TokenCounts:
    """Real vs processed tokens of one micro-batch, as the collator built it (before it moves to the device).
    `meta` is the packed collator's bookkeeping (`packing.pop_batch_meta`): real tokens and examples."""
    if meta:
        return TokenCounts(meta[REAL_TOKENS_KEY], inputs["input_ids"].numel(), meta[EXAMPLES_KEY])
    if "attention_mask" in inputs:
        real = int(inputs["attention_mask"].sum())
        processed = inputs["attention_mask"].numel()
        if "decoder_input_ids" in inputs or (
            "labels" in inputs and inputs["labels"].shape != inputs["attention_mask"].shape
        ):
            labels = inputs["labels"]
            real += int((labels != -100).sum())
            processed += labels.numel()
        return TokenCounts(real, processed, inputs["attention_mask"].shape[0])
    # TRL's padding-free packing: one flattened row, nothing padded
    n = inputs["input_ids"].numel()
    return TokenCounts(n, n, int((inputs["position_ids"] == 0).sum()) if "position_ids" in inputs else 1)


@dataclass
class TrainerExtras:
    """What dialsum's trainer mixins need beyond the HF Trainer's own arguments, given at construction."""

    config: Config
    run_dir: Path
    rouge_dialogues: list[Dialogue] = field(default_factory=list)  # dev subset generated at each evaluation

    @property
    def packing(self) -> bool:
        return self.config.training.packing and self.config.model.kind == "causal"


class DialsumTrainerMixin:
    """Sets up every dialsum mixin from `extras` when the trainer is built (`train.build_trainer`): the run
    monitor, warmup as a ratio, packed micro-batches counted in examples, dev ROUGE at each evaluation."""

    def __init__(self, *args, extras: TrainerExtras, **kwargs):
        super().__init__(*args, **kwargs)
        t = extras.config.training
        self.dialsum_config = extras.config
        self.rouge_dialogues = list(extras.rouge_dialogues)
        self.warmup_ratio = t.effective_warmup_ratio()
        self.warmup_steps = t.warmup_steps
        self.grad_norm_threshold = t.grad_norm_threshold
        self.packing = extras.packing
        self.spikes_path = extras.run_dir / SPIKES_FILE
        self._window = TokenCounts()
        self._window_start = time.perf_counter()
        self.add_callback(metrics_callback(extras.run_dir / METRICS_FILE))
        self.add_callback(configured_steps_callback())
        self._spikes_in_window = 0
        place_trackers(self, extras.run_dir)
        compact_progress(self)
        if extras.packing:  # rows stay rows on sdpa/eager; micro-batches count examples
            layout = packing_layout(extras.config.model.attn_implementation)
            self.data_collator = PackedBatchCollator(self.processing_class.pad_token_id, layout)
            if t.packing_batch_unit == "examples":
                self.examples_per_micro_batch = t.per_device_train_batch_size
                note = example_budget_note(
                    [len(s) for s in self.train_dataset["seq_lengths"]], self.examples_per_micro_batch
                )
                if note:
                    print(f"note: {note}", file=sys.stderr)


class MonitorMixin:
    """Counts real tokens, measures throughput and records every grad-norm spike with its step."""

    grad_norm_threshold: float = 1.5
    packing: bool = False

    def training_step(self, model, inputs, num_items_in_batch=None):
        if self.packing and "position_ids" in inputs and "attention_mask" in inputs:
            raise RuntimeError("packed batch carries an attention_mask: samples would attend to each other")
        counts = count_tokens(inputs, pop_batch_meta(inputs))
        self._window.real += counts.real
        self._window.processed += counts.processed
        self._window.examples += counts.examples
        return super().training_step(model, inputs, num_items_in_batch)

    def _get_grad_norm(self, model, grad_norm=None):
        value = super()._get_grad_norm(model, grad_norm)
        if value is not None and float(value) > self.grad_norm_threshold and self.is_world_process_zero():
            append_line(self.spikes_path, json.dumps({"step": self.state.global_step + 1, "grad_norm": float(value)}))
            self._spikes_in_window = getattr(self, "_spikes_in_window", 0) + 1
        return value

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs:
            window = torch.tensor(
                [self._window.real, self._window.processed, self._window.examples], dtype=torch.float64
            )
            if self.accelerator.num_processes > 1:
                window = self.accelerator.reduce(window.to(self.accelerator.device), reduction="sum").cpu()
            elapsed = time.perf_counter() - self._window_start
            logs["tokens_per_second"] = round(float(window[0]) / max(elapsed, 1e-9), 2)
            logs["real_token_fraction"] = round(float(window[0]) / max(float(window[1]), 1.0), 4)
            logs["real_tokens"] = int(window[0])
            logs["processed_tokens"] = int(window[1])
            logs["examples"] = int(window[2])
            logs["train_seconds"] = round(elapsed, 3)
            # trackers (W&B, TensorBoard) see the spikes as train/grad_norm_spikes: how many since the last log
            logs["grad_norm_spikes"] = getattr(self, "_spikes_in_window", 0)
            self._spikes_in_window = 0
            self._window = TokenCounts()
        super().log(logs, start_time)
        if "loss" in logs:
            self._window_start = time.perf_counter()  # evaluation time is not training time


def shared_parameter_names(model) -> set[str]:
    """Names of parameters that are another parameter (tied embeddings: lm_head.weight is embed_tokens.weight).
    A checkpoint stores a shared tensor once, so these are 'missing' from it by design."""
    groups: dict[int, list[str]] = {}
    for name, parameter in model.named_parameters(remove_duplicate=False):
        groups.setdefault(id(parameter), []).append(name)
    return {name for names in groups.values() if len(names) > 1 for name in names}


class TiedWeightsMixin:
    """Loading the best checkpoint of a tied-embedding model (Llama-3.2, Qwen3 small): transformers warns 'missing
    keys ['lm_head.weight']', which is the shared tensor stored once. Those keys are expected and left unsaid;
    any other missing key is still reported."""

    def _issue_warnings_after_load(self, load_result) -> None:
        missing = list(getattr(load_result, "missing_keys", []) or [])
        shared = shared_parameter_names(self.model) if missing else set()
        if missing and set(missing) <= shared:
            self.model.tie_weights()
            load_result = type(load_result)(missing_keys=[], unexpected_keys=list(load_result.unexpected_keys))
        super()._issue_warnings_after_load(load_result)


class WarmupRatioMixin:
    """`training.warmup_ratio` as a ratio for every value in [0, 1]: transformers reads a `warmup_steps` >= 1 as a
    step count, so a ratio of 1.0 would become a one-step warmup. `training.warmup_steps` stays a step count."""

    warmup_ratio: float = 0.0
    warmup_steps: int | None = None

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        if self.warmup_steps is not None:
            self.args.warmup_steps = self.warmup_steps
        else:
            self.args.warmup_steps = math.ceil(num_training_steps * self.warmup_ratio)
        return super().create_scheduler(num_training_steps, optimizer)


class RougeEvalMixin:
    """At each evaluation, generate summaries for a dev subset and log `eval_<key>` for each of the scheme's score
    keys (kiwi, dialogsum: ROUGE-1/2/L, the sum, the final score; dcs: ROUGE-1), so checkpoints can be selected by
    what the competition scores, not by loss."""

    rouge_dialogues: list[Dialogue] = []
    dialsum_config: Config | None = None

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix="eval"):
        metrics = super().evaluate(
            eval_dataset=eval_dataset, ignore_keys=ignore_keys, metric_key_prefix=metric_key_prefix
        )
        if not self.rouge_dialogues or metric_key_prefix != "eval":
            return metrics
        from dialsum.generate import generate_summaries

        config = self.dialsum_config
        model = self.accelerator.unwrap_model(self.model)
        was_training = model.training
        model.eval()
        # Under DDP every process holds the same weights: the main process generates and scores, and every process
        # receives its scores (each needs them to select the best checkpoint). Sharded weights (FSDP, ZeRO-3) need
        # every process in each forward pass, so there all of them generate the same subset.
        once = self.accelerator.num_processes > 1 and not (self.is_fsdp_enabled or self.is_deepspeed_enabled)
        rouge = None
        if not once or self.accelerator.is_main_process:
            predictions = generate_summaries(model, self.processing_class, self.rouge_dialogues, config, progress=False)
            references = [d.references for d in self.rouge_dialogues]
            rouge = training_scores(predictions, references, config)
        if once:
            from accelerate.utils import broadcast_object_list

            rouge = broadcast_object_list([rouge])[0]
        self.log(rouge)  # while the model is in eval mode, so TRL files these under eval
        model.train(was_training)
        metrics.update(rouge)
        return metrics


def training_scores(predictions: list[str], references: list[list[str]], config: Config) -> dict[str, float]:
    """`eval_<key>` of every score the run's scheme declares that can be computed at each evaluation. dcs skips its
    model-based metrics (BERTScore and BLEURT at every evaluation would cost more than training): its ROUGE-1
    (the scheme's fallback) is what ranks checkpoints."""
    from dialsum.schemes import get_scheme, score_scheme

    scheme = get_scheme(config.evaluation.scheme)
    scores, _ = score_scheme(
        predictions,
        references,
        scheme.name,
        tokenizer=config.evaluation.tokenizer,
        forbidden_scripts=config.generation.forbidden_scripts,
        model_metrics=False,
    )
    return {f"eval_{key}": scores[key] for key in scheme.keys if scores.get(key) is not None}


def metrics_callback(path: Path):
    """Appends every log line (train and eval) to metrics.jsonl on the main process."""
    from transformers import TrainerCallback

    class MetricsFile(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if not state.is_world_process_zero or not logs:
                return
            row = {"step": state.global_step, "epoch": round(state.epoch or 0.0, 4), **logs}
            append_line(path, json.dumps(row, ensure_ascii=False))

    return MetricsFile()


def place_trackers(trainer, run_dir: Path) -> None:
    """TensorBoard's event files go into the run directory (run_dir/tensorboard/), not checkpoints/runs/<date>;
    W&B names its run after the run directory (its files: run_dir/wandb/, set in train.py before the trainer)."""
    from transformers.integrations import TensorBoardCallback

    from dialsum.rundir import TENSORBOARD_DIR

    for callback in trainer.callback_handler.callbacks:
        if isinstance(callback, TensorBoardCallback) and callback.logging_dir is None:
            callback.logging_dir = str(run_dir / TENSORBOARD_DIR)
    if trainer.args.run_name in (None, trainer.args.output_dir):
        trainer.args.run_name = run_dir.name


def compact_line(logs: dict, state) -> str | None:
    """One readable line per log instead of a stringified dict: train steps and evaluations; None for the rest."""

    def number(value: float) -> str:
        return f"{value:.2e}" if 0 < abs(value) < 1e-3 else f"{value:.4g}"

    if "loss" in logs:
        parts = [f"step {state.global_step}/{state.max_steps}", f"loss {number(logs['loss'])}"]
        if logs.get("grad_norm") is not None:
            parts.append(f"grad norm {number(logs['grad_norm'])}")
        if logs.get("learning_rate") is not None:
            parts.append(f"lr {number(logs['learning_rate'])}")
        if logs.get("tokens_per_second"):
            parts.append(f"{logs['tokens_per_second']:,.0f} tokens/s")
        if logs.get("grad_norm_spikes"):
            parts.append(f"{logs['grad_norm_spikes']} grad-norm spike(s)")
        return " · ".join(parts)
    evals = {k.removeprefix("eval_"): v for k, v in logs.items() if k.startswith("eval_") and "runtime" not in k}
    evals = {k: v for k, v in evals.items() if "per_second" not in k and k != "num_tokens"}  # TRL's token count
    if evals:
        return f"eval at step {state.global_step}: " + ", ".join(f"{k} {number(v)}" for k, v in evals.items())
    return None


def compact_progress(trainer) -> None:
    """The progress bar stays; each log is one compact line above it, not a printed dict."""
    from transformers.trainer_callback import ProgressCallback

    class CompactProgress(ProgressCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if state.is_world_process_zero and self.training_bar is not None and logs:
                line = compact_line(logs, state)
                if line:
                    self.training_bar.write(line)

    if any(isinstance(c, ProgressCallback) for c in trainer.callback_handler.callbacks):
        trainer.remove_callback(ProgressCallback)
        trainer.add_callback(CompactProgress())


def configured_steps_callback():
    """On resume transformers restores logging/eval/save steps from the checkpoint's trainer state (and only logs a
    warning); the run's config, with the --set overrides of this resume, wins."""
    from transformers import TrainerCallback

    class ConfiguredSteps(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            state.compute_steps(args, state.max_steps)

    return ConfiguredSteps()


# ---------------------------------------------------------------- the run's summary


def precision_record(trainer) -> dict:
    """The dtypes training actually uses, read off the model, the accelerator and the optimizer."""

    def names(dtypes) -> list[str]:
        return sorted({str(d).removeprefix("torch.") for d in dtypes})

    params = list(trainer.model.parameters())
    state = trainer.optimizer.state.values() if trainer.optimizer is not None else []
    optimizer_state = names(v.dtype for s in state for v in s.values() if torch.is_tensor(v) and v.dim() > 0)
    trainable = names(p.dtype for p in params if p.requires_grad)
    return {
        "trainable_weights": trainable,
        "frozen_weights": names(p.dtype for p in params if not p.requires_grad),
        "compute": {"bf16": "bfloat16", "fp16": "float16"}.get(str(trainer.accelerator.mixed_precision), "float32"),
        # torch's AdamW keeps its moments in the parameter's dtype; measured once the optimizer holds state
        "optimizer_state": optimizer_state or trainable,
        "optimizer": str(getattr(trainer.args.optim, "value", trainer.args.optim)),
        "policy": PRECISION_POLICY,
    }


@dataclass
class RunSummary:
    run_dir: str
    model_kind: str
    steps: int = 0
    epochs: float = 0.0
    train_seconds: float = 0.0
    tokens_per_second: float | None = None
    real_token_fraction: float | None = None
    final_train_loss: float | None = None
    final_eval_loss: float | None = None
    best_eval_loss: float | None = None
    best_step: int | None = None
    best_metric: str | None = None
    best_metric_value: float | None = None
    best_checkpoint_rule: str | None = None
    effective_batch_size: int = 0
    world_size: int = 1
    effective_batch_unit: str = "examples"  # what effective_batch_size counts: examples, or packed rows
    examples_per_optimizer_step: float | None = None  # measured: training examples per optimizer step, mean
    optimizer_steps_per_epoch: int | None = None
    packing_layout: str | None = None  # "rows" (sdpa/eager) or "flat" (flash-attention); None without packing
    grad_norm_threshold: float = 1.5
    grad_norm_spikes: list[list[float]] = field(default_factory=list)
    grad_norm_max: float | None = None
    train_examples: int = 0
    train_sources: dict = field(default_factory=dict)  # examples trained on per file (and per augment recipe)
    dev_examples: int = 0
    encode: dict = field(default_factory=dict)
    template_notes: list[str] = field(default_factory=list)
    precision: dict = field(default_factory=dict)


def summarise(
    trainer, run_dir: Path, config: Config, encode_stats: EncodeStats, n_dev: int, notes: list[str]
) -> RunSummary:
    rows, _ = read_jsonl(run_dir / METRICS_FILE)
    train_rows = [r for r in rows if "loss" in r]
    eval_rows = [r for r in rows if "eval_loss" in r]
    grad_norms = [r["grad_norm"] for r in train_rows if r.get("grad_norm") is not None]
    real = sum(r.get("real_tokens", 0) for r in train_rows)
    processed = sum(r.get("processed_tokens", 0) for r in train_rows)
    seconds = sum(r.get("train_seconds", 0.0) for r in train_rows)
    # The step the Trainer selected (and reloaded into model/), by the metric it selected with.
    best_step = trainer.state.best_global_step if eval_rows and trainer.args.load_best_model_at_end else None
    best = next((r for r in eval_rows if r["step"] == best_step), None)
    metric = trainer.args.metric_for_best_model
    rule = None
    if best_step is not None:
        direction = "highest" if trainer.args.greater_is_better else "lowest"
        rule = f"model/ holds the checkpoint of the evaluation with the {direction} {metric} (saved at each evaluation)"
    examples_seen = sum(r.get("examples", 0) for r in train_rows)
    packing = config.training.packing and config.model.kind == "causal"
    spikes = [[r["step"], r["grad_norm"]] for r in read_jsonl(run_dir / SPIKES_FILE)[0]]
    return RunSummary(
        run_dir=str(run_dir),
        model_kind=config.model.kind,
        steps=trainer.state.global_step,
        epochs=round(trainer.state.epoch or 0.0, 3),
        train_seconds=round(seconds, 2),
        tokens_per_second=round(real / seconds, 1) if seconds else None,
        real_token_fraction=round(real / processed, 4) if processed else None,
        final_train_loss=train_rows[-1]["loss"] if train_rows else None,
        final_eval_loss=eval_rows[-1]["eval_loss"] if eval_rows else None,
        best_eval_loss=best["eval_loss"] if best else None,
        best_step=best_step,
        best_metric=metric if best_step is not None else None,
        best_metric_value=trainer.state.best_metric if best_step is not None else None,
        best_checkpoint_rule=rule,
        effective_batch_size=trainer.args.per_device_train_batch_size
        * trainer.args.gradient_accumulation_steps
        * trainer.args.world_size,
        world_size=trainer.args.world_size,
        effective_batch_unit="rows" if packing and config.training.packing_batch_unit == "rows" else "examples",
        examples_per_optimizer_step=(
            round(examples_seen / trainer.state.global_step, 2) if examples_seen and trainer.state.global_step else None
        ),
        optimizer_steps_per_epoch=getattr(trainer, "optimizer_steps_per_epoch", None),
        packing_layout=packing_layout(config.model.attn_implementation) if packing else None,
        grad_norm_threshold=config.training.grad_norm_threshold,
        grad_norm_spikes=spikes,
        grad_norm_max=max([s[1] for s in spikes] + grad_norms) if (spikes or grad_norms) else None,
        train_examples=encode_stats.encoded,
        dev_examples=n_dev,
        encode=asdict(encode_stats),
        template_notes=notes,
        precision=precision_record(trainer),
    )
