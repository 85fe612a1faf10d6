"""`dialsum train`: one config in, one run directory out.

The workflow reads top to bottom in `train()`: resolve the run directory, read and encode the data
(labels on the summary only), load the model (full, LoRA or QLoRA), build TRL's SFTTrainer
(decoder-only) or Seq2SeqTrainer (encoder-decoder), train, save, summarise.

Packing: TRL's best-fit-decreasing packing; dialsum's collator (packing.py) keeps each packed row a batch
row on sdpa/eager (TRL's flattened row only on flash-attention), with `position_ids` restarting per sample
and *no* attention mask; TRL calls the model with `use_cache=False`. That is the one combination under
which transformers 5 builds a block-diagonal mask per row on sdpa/eager (and varlen kernels on
flash-attention), so packed samples never attend to each other. `monitor.MonitorMixin.training_step` refuses any
packed batch that carries an attention mask. Micro-batches hold `per_device_train_batch_size` examples on
average (`training.packing_batch_unit`), so packing leaves the recipe's effective batch unchanged.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from dialsum.config import Config, config_from_dict, load_config, save_config
from dialsum.data import Dialogue, load_dialogues
from dialsum.encode import EncodeStats, encode_dialogues, prepare_tokenizer
from dialsum.errors import ConfigError, RunDirError
from dialsum.length import with_length_rule
from dialsum.models import (
    compute_dtype,
    has_cuda,
    kbit_training_settings,
    load_model,
    precision_warning,
)
from dialsum.monitor import (
    DialsumTrainerMixin,
    MonitorMixin,
    RougeEvalMixin,
    RunSummary,
    TrainerExtras,
    WarmupRatioMixin,
    precision_record,
    summarise,
)
from dialsum.packing import PackedBatchesMixin
from dialsum.prompt import resolve_topic_policy
from dialsum.rundir import (
    CHECKPOINT_DIR,
    CONFIG_FILE,
    METRICS_FILE,
    MODEL_DIR,
    MODEL_STAGING_DIR,
    SPIKES_FILE,
    SUMMARY_FILE,
    TRAINER_STATE_FILE,
    append_resume,
    check_run_dir,
    checkpoint_step,
    clear_failed_start,
    default_run_dir,
    drop_metrics_after,
    last_checkpoint,
    summary_rows,
    write_env,
)
from dialsum.writer import write_json

console = Console(stderr=True)


# ---------------------------------------------------------------- run directory and resume


# Config keys a resume may change: they do not alter the model, the data or the optimizer's state.
RESUME_SAFE_KEYS = (
    "training.num_train_epochs",
    "training.max_steps",
    "training.save_total_limit",
    "training.dataloader_num_workers",
    "training.per_device_eval_batch_size",
    "training.grad_norm_threshold",
    "logging.",
    "generation.",
    "data.test",
    "evaluation.tokenizer",
)


def resume_config(run_dir: Path, overrides: list[str]) -> Config:
    """The run's saved config with the --set overrides that are safe on resume; any other key is an error."""
    for override in overrides:
        key = override.partition("=")[0].strip()
        if not any(key == safe or (safe.endswith(".") and key.startswith(safe)) for safe in RESUME_SAFE_KEYS):
            raise ConfigError(
                f"--set {key}: cannot change on --resume (the run continues with its saved value); keys that can: "
                + ", ".join(k + "*" if k.endswith(".") else k for k in RESUME_SAFE_KEYS)
            )
    return load_config(run_dir / CONFIG_FILE, overrides)


# ---------------------------------------------------------------- building the trainer


def checkpointing_arguments(enabled: bool) -> dict:
    """Non-reentrant checkpointing under the name the installed transformers knows: `activation_checkpointing` since
    it was renamed (`gradient_checkpointing` stays a deprecated alias), `gradient_checkpointing` before (5.17, the
    GPU image's, rejects the new name)."""
    from dataclasses import fields

    from transformers import TrainingArguments

    known = {f.name for f in fields(TrainingArguments)}
    name = "activation_checkpointing" if "activation_checkpointing" in known else "gradient_checkpointing"
    return {name: enabled, f"{name}_kwargs": {"use_reentrant": False} if enabled else None}


def training_arguments(config: Config, run_dir: Path, has_dev: bool, seq2seq: bool):
    """Baseline-aligned TrainingArguments (SFTConfig for decoder-only, Seq2SeqTrainingArguments otherwise)."""
    t = config.training
    for backend in config.logging.report_to:
        try:
            __import__("wandb" if backend == "wandb" else "tensorboard")
        except ImportError:
            raise ConfigError(
                f"logging.report_to includes {backend}, which is not installed: pip install 'dialsum[{backend}]'"
            ) from None
    evaluate_by_steps = has_dev and t.eval_steps is not None
    save_steps = t.save_steps or t.eval_steps
    compute = compute_dtype(config)
    select_best_by = config.evaluation.select_best_by
    common = dict(
        output_dir=str(run_dir / CHECKPOINT_DIR),
        learning_rate=t.learning_rate,
        lr_scheduler_type=t.lr_scheduler_type,
        weight_decay=t.weight_decay,
        per_device_train_batch_size=t.per_device_train_batch_size,
        per_device_eval_batch_size=t.per_device_eval_batch_size,
        gradient_accumulation_steps=t.gradient_accumulation_steps,
        num_train_epochs=t.num_train_epochs,
        max_steps=t.max_steps,
        warmup_steps=0,  # set from training.warmup_ratio once the step count is known (WarmupRatioMixin)
        max_grad_norm=t.max_grad_norm,
        **checkpointing_arguments(t.gradient_checkpointing),
        logging_steps=config.logging.steps,
        logging_first_step=True,
        eval_strategy=("steps" if evaluate_by_steps else "epoch") if has_dev else "no",
        eval_steps=t.eval_steps if evaluate_by_steps else None,
        save_strategy="steps" if save_steps else "epoch",
        save_steps=save_steps,
        save_total_limit=t.save_total_limit,
        load_best_model_at_end=has_dev,  # save and eval steps agree (config.py): the best checkpoint is on disk
        metric_for_best_model=select_best_by if has_dev else None,
        greater_is_better=select_best_by != "eval_loss",
        seed=t.seed,
        data_seed=t.seed,
        bf16=compute == torch.bfloat16,  # autocast; the weights keep the dtype they loaded in (models.py)
        fp16=compute == torch.float16,
        report_to=list(config.logging.report_to) or "none",
        dataloader_num_workers=t.dataloader_num_workers,
        use_cpu=not has_cuda(),
        ddp_find_unused_parameters=False if int(os.environ.get("WORLD_SIZE", "1")) > 1 else None,
    )
    if seq2seq:
        from transformers import Seq2SeqTrainingArguments

        return Seq2SeqTrainingArguments(**common, predict_with_generate=False)
    from trl import SFTConfig

    return SFTConfig(
        **common,
        max_length=t.max_length,
        packing=t.packing,
        packing_strategy="bfd",
        padding_free=t.packing,
        dataset_num_proc=None,
        shuffle_dataset=False,  # the Trainer's sampler shuffles each epoch, seeded
    )


def peft_lora_config(config: Config):
    from peft import LoraConfig

    return LoraConfig(
        r=config.lora.r,
        lora_alpha=config.lora.alpha,
        lora_dropout=config.lora.dropout,
        target_modules=config.lora.target_modules,
        task_type="CAUSAL_LM" if config.model.kind == "causal" else "SEQ_2_SEQ_LM",
    )


def _to_dataset(examples: list[dict]):
    from datasets import Dataset

    return Dataset.from_list(examples)


def build_trainer(
    config: Config,
    model,
    tokenizer,
    train_examples: list[dict],
    dev_examples: list[dict],
    run_dir: Path,
    rouge_dialogues: list[Dialogue] | None = None,
):
    """SFTTrainer (decoder-only: packing, LoRA through TRL) or Seq2SeqTrainer, both with the run monitor
    and, when `rouge_dialogues` are given, generation-based ROUGE at each evaluation; every dialsum setting is
    given at construction (`monitor.TrainerExtras`)."""
    from transformers import DataCollatorForSeq2Seq, Seq2SeqTrainer
    from trl import SFTTrainer

    seq2seq = config.model.kind == "seq2seq"
    args = training_arguments(config, run_dir, has_dev=bool(dev_examples), seq2seq=seq2seq)
    peft_config = peft_lora_config(config) if config.lora.enabled else None
    if seq2seq:
        from peft import get_peft_model

        if peft_config is not None:
            model = get_peft_model(model, peft_config)
        base = Seq2SeqTrainer
        extra = {"data_collator": DataCollatorForSeq2Seq(tokenizer, model=model, label_pad_token_id=-100)}
    else:  # TRL applies LoRA itself, after adding its fused LM head
        base = SFTTrainer
        extra = {"peft_config": peft_config}
    trainer_class = type(
        f"Dialsum{base.__name__}",
        (DialsumTrainerMixin, RougeEvalMixin, MonitorMixin, WarmupRatioMixin, PackedBatchesMixin, base),
        {},
    )
    return trainer_class(
        model=model,
        args=args,
        train_dataset=_to_dataset(train_examples),
        eval_dataset=_to_dataset(dev_examples) if dev_examples else None,
        processing_class=tokenizer,
        extras=TrainerExtras(config=config, run_dir=run_dir, rouge_dialogues=list(rouge_dialogues or [])),
        **extra,
    )


def print_summary(summary: RunSummary) -> None:
    table = Table(title=f"dialsum train — {summary.run_dir}", show_header=False)
    unit = "packed rows" if summary.effective_batch_unit == "rows" else "examples"
    table.add_row(
        "effective batch",
        f"{summary.effective_batch_size} {unit} ({summary.world_size} process(es))"
        + (f", packed in {summary.packing_layout} layout" if summary.packing_layout else ""),
    )
    for label, value in summary_rows(asdict(summary)):
        table.add_row(label, value)
    console.print(table)


# ---------------------------------------------------------------- the workflow


def check_launcher_precision(config: Config) -> None:
    """`accelerate launch` exports its config's mixed_precision, which transformers lets win over TrainingArguments:
    a launcher that disagrees with training.bf16 would silently change the compute dtype."""
    launcher = os.environ.get("ACCELERATE_MIXED_PRECISION", "no")
    mine = {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(compute_dtype(config), "no")
    if launcher != "no" and launcher != mine:
        raise ConfigError(
            f"the accelerate config sets mixed_precision={launcher} but training.bf16={config.training.bf16} means "
            f"{mine} on this machine; set mixed_precision: 'no' in the accelerate config (dialsum's training.bf16 "
            "decides) or make the two agree"
        )


def check_not_finished(checkpoint: str, config: Config, overrides: list[str]) -> None:
    """Resuming a checkpoint that already reached the run's length would silently train one step more
    (transformers does); refuse and say how to extend the run instead."""
    state = json.loads((Path(checkpoint) / TRAINER_STATE_FILE).read_text(encoding="utf-8"))
    step, planned = state.get("global_step", 0), state.get("max_steps", 0)
    t = config.training
    length_changed = any(
        o.partition("=")[0].strip() in ("training.max_steps", "training.num_train_epochs") for o in overrides
    )
    if (t.max_steps > 0 and step >= t.max_steps) or (not length_changed and planned and step >= planned):
        raise RunDirError(
            f"{checkpoint}: the run already finished at step {step}; to train further, raise "
            "training.max_steps or training.num_train_epochs with --set on --resume"
        )


def save_final_model(trainer, tokenizer, run_dir: Path) -> Path:
    """model/ (weights or adapter, and the tokenizer), written into a staging directory and renamed when complete,
    so a kill mid-save never leaves a model/ that looks finished. Full weights whatever the distribution: under
    FSDP with SHARDED_STATE_DICT (fast checkpoints), `save_model` writes no weights, so the final save gathers a
    full state dict (every process takes part; the main one writes)."""
    import shutil

    from dialsum.writer import commit_directory

    staging, model_dir = run_dir / MODEL_STAGING_DIR, run_dir / MODEL_DIR
    main = trainer.is_world_process_zero()
    if main and staging.exists():  # left by a save that was killed
        shutil.rmtree(staging)
    trainer.accelerator.wait_for_everyone()
    if trainer.is_fsdp_enabled:
        plugin = trainer.accelerator.state.fsdp_plugin
        if "FULL_STATE_DICT" not in str(plugin.state_dict_type):
            plugin.state_dict_config = plugin.optim_state_dict_config = None  # rebuilt for the full type
            plugin.set_state_dict_type("FULL_STATE_DICT")
            if trainer.is_world_process_zero():
                console.print("FSDP: gathering a full state dict for model/ (checkpoints stay sharded)")
    trainer.save_model(str(staging))
    if main:
        tokenizer.save_pretrained(str(staging))
        commit_directory(staging, model_dir)
    trainer.accelerator.wait_for_everyone()
    return model_dir


@dataclass
class RunStart:
    """Where the run goes and how it starts: fresh, in a directory a failed start left (`reuse`), or resumed from
    `checkpoint` with the run's saved config and the --set `overrides` that are safe mid-run."""

    run_dir: Path
    config: Config
    resume: bool
    reuse: bool
    checkpoint: str | None
    overrides: list[str]
    is_main: bool


@dataclass
class PreparedData:
    """The tokenizer and the encoded splits, and the config resolved against the data (topic policy, length rule):
    the config saved in config.yaml and used from here on."""

    config: Config
    tokenizer: object
    train_examples: list[dict]
    dev_examples: list[dict]
    dev_dialogues: list[Dialogue]
    encode_stats: EncodeStats
    template_notes: list[str]


def train(
    config: Config,
    config_path: str | Path | None = None,
    output_dir: str | Path | None = None,
    resume: bool = False,
    overrides: list[str] | None = None,
) -> Path:
    """Train per `config`; returns the run directory (config.yaml, env.json, metrics.jsonl, model/, summary.json).

    On resume the run's saved config.yaml is the truth; `overrides` (the --set list) are applied to it when their
    keys are safe to change mid-run (RESUME_SAFE_KEYS), and any other key is an error. Every stage before
    `_open_run_dir` writes nothing, so bad data, a bad model id or a missing GPU leave nothing behind."""
    start = _start_run(config, config_path, output_dir, resume, list(overrides or []))
    data = _prepare_data(start.config)
    model = _load_model(data.config, data.tokenizer)
    trainer = _open_run_dir(start, data, model)
    _fit_and_save(trainer, start, data)
    return start.run_dir


def _start_run(
    config: Config, config_path: str | Path | None, output_dir: str | Path | None, resume: bool, overrides: list[str]
) -> RunStart:
    """Resolve the run directory (never overwritten), and on resume the run's saved config and its checkpoint.
    Every process checks before any process writes, so all of them stop together."""
    from accelerate import PartialState

    from dialsum.rundir import flatten

    # Re-validate: fields assigned after loading (tests, notebooks) skip the cross-field rules.
    config = config_from_dict(config.to_dict(), source="config")
    if output_dir is None and resume:
        raise RunDirError("--resume needs --output-dir RUN_DIR (the run to continue)")
    state = PartialState(cpu=not has_cuda())
    is_main = state.is_main_process
    run_dir = Path(output_dir) if output_dir else default_run_dir(config, config_path)
    if state.num_processes > 1:  # the timestamped default must name one directory for every process
        from accelerate.utils import broadcast_object_list

        run_dir = Path(broadcast_object_list([str(run_dir)])[0])
    reuse = check_run_dir(run_dir, resume)
    checkpoint = last_checkpoint(run_dir) if resume else None
    if resume:
        if checkpoint is None:
            raise RunDirError(
                f"{run_dir}: --resume found no checkpoint under {CHECKPOINT_DIR}/; "
                "run the same command without --resume to start afresh in it"
            )
        given = config
        config = resume_config(run_dir, overrides)
        saved = flatten(config.to_dict())
        ignored = sorted(k for k, v in flatten(given.to_dict()).items() if saved.get(k) != v)
        if ignored and is_main:
            console.print(
                f"[yellow]resume:[/] the run's {CONFIG_FILE} is used; the given config differs at "
                f"{', '.join(ignored)} (not applied: pass safe keys with --set)"
            )
        if overrides and is_main:
            console.print(f"resume: applying {', '.join(overrides)}")
        check_not_finished(checkpoint, config, overrides)
    if config.data.train is None:
        raise ConfigError("data.train is not set: training needs a training file")
    check_launcher_precision(config)
    warning = precision_warning(config)
    if warning and is_main:
        console.print(f"[yellow]warning:[/] {warning}")
    return RunStart(run_dir, config, resume, reuse, checkpoint, overrides, is_main)


def _prepare_data(config: Config) -> PreparedData:
    """Read, resolve the prompt's topic policy and the length rule, and encode with labels on the summary only."""
    train_dialogues = load_dialogues(config.data.train)
    dev_dialogues = load_dialogues(config.data.dev) if config.data.dev else []
    config, topic_note = resolve_topic_policy(config, train_dialogues, dev_dialogues)  # saved resolved, for inference
    if topic_note:
        console.print(f"[yellow]prompt:[/] {topic_note}")
    tokenizer, added_tokens, notes = prepare_tokenizer(config, train_dialogues + dev_dialogues)
    if added_tokens:
        console.print(f"added {len(added_tokens)} speaker/mask tokens to the vocabulary: {', '.join(added_tokens[:8])}")
    for line in notes:
        console.print(f"[yellow]chat template:[/] {line}")
    # generation.max_new_tokens=auto: the length rule is fitted once, here, and saved in config.yaml, so predict
    # needs neither the training file nor a refit
    config = with_length_rule(config, tokenizer)
    train_examples, encode_stats = encode_dialogues(tokenizer, train_dialogues, config)
    dev_examples, dev_stats = (
        encode_dialogues(tokenizer, dev_dialogues, config) if dev_dialogues else ([], EncodeStats())
    )
    console.print(f"train: {encode_stats.describe()}")
    if dev_dialogues:
        console.print(f"dev:   {dev_stats.describe()}")
    if not train_examples:
        raise ConfigError(f"{config.data.train}: no trainable examples after encoding ({encode_stats.describe()})")
    return PreparedData(config, tokenizer, train_examples, dev_examples, dev_dialogues, encode_stats, notes)


def _load_model(config: Config, tokenizer):
    """Full weights, LoRA or QLoRA; the KV cache off (it breaks packed-sample isolation)."""
    model = load_model(config.model.name_or_path, config, for_training=True)
    if len(tokenizer) > model.get_input_embeddings().num_embeddings:  # never shrink (Qwen pads its matrix)
        model.resize_token_embeddings(len(tokenizer))
    model.config.use_cache = False
    model.config.pad_token_id = tokenizer.pad_token_id
    if config.lora.enabled and config.lora.load_in_4bit:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, **kbit_training_settings(config))
    return model


def _open_run_dir(start: RunStart, data: PreparedData, model):
    """Build the trainer, then write the run directory: a failed start before here writes nothing; one after it
    (out of memory in the first steps) leaves a directory without checkpoint or model, which the next start reuses."""
    from accelerate import PartialState

    config, run_dir = data.config, start.run_dir
    state = PartialState()
    state.wait_for_everyone()
    if start.reuse and start.is_main:
        removed = clear_failed_start(run_dir)
        console.print(
            f"[yellow]{run_dir}:[/] holds no checkpoint and no model (an earlier start failed); "
            f"starting afresh in it, replacing {', '.join(removed) or 'nothing'}"
        )
    rouge_dialogues = []
    if config.evaluation.rouge_during_training and data.dev_dialogues:
        rouge_dialogues = [d for d in data.dev_dialogues if d.references][: config.evaluation.rouge_subset]
        if config.evaluation.scheme == "dcs":
            console.print(
                "[yellow]evaluation:[/] dev scores during training are scheme dcs's ROUGE-1 only (eval_rouge1; its "
                "BERTScore and BLEURT would cost more than training at every evaluation); the final dev scores "
                "are the full dcs recipe"
            )
    trainer = build_trainer(
        config, model, data.tokenizer, data.train_examples, data.dev_examples, run_dir, rouge_dialogues
    )
    if start.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        if not start.resume or start.overrides:
            save_config(config, run_dir / CONFIG_FILE)
        if start.resume:
            append_resume(run_dir, checkpoint_step(start.checkpoint), start.overrides)
        else:
            write_env(run_dir, precision_record(trainer), str(trainer.accelerator.distributed_type.value))
    state.wait_for_everyone()
    return trainer


def _fit_and_save(trainer, start: RunStart, data: PreparedData) -> None:
    """Train (from the last checkpoint on resume), save model/, write and print the summary."""
    run_dir = start.run_dir
    if start.checkpoint and start.is_main:
        step = checkpoint_step(start.checkpoint)
        unreadable = sum(drop_metrics_after(run_dir / name, step) for name in (METRICS_FILE, SPIKES_FILE))
        if unreadable:
            console.print(
                f"[yellow]resume:[/] dropped {unreadable} unreadable log line(s) (left by the interrupted run)"
            )
    trainer.train(resume_from_checkpoint=start.checkpoint)
    save_final_model(trainer, data.tokenizer, run_dir)
    if trainer.is_world_process_zero():
        summary = summarise(
            trainer, run_dir, data.config, data.encode_stats, len(data.dev_examples), data.template_notes
        )
        write_json(run_dir / SUMMARY_FILE, asdict(summary))
        print_summary(summary)
