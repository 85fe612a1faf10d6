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

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from dialsum.augment_validate import check_training_leaks
from dialsum.config import Config, config_from_dict, save_config
from dialsum.data import Dialogue, data_files, load_dialogues, source_counts, untagged
from dialsum.encode import EncodeStats, encode_dialogues, prepare_tokenizer
from dialsum.errors import ConfigError, DataError, Interrupted, RunDirError
from dialsum.length import with_length_rule
from dialsum.models import (
    check_lora_targets,
    check_model_kind,
    compute_dtype,
    has_cuda,
    kbit_training_settings,
    load_model,
    precision_warning,
)
from dialsum.monitor import (
    RunSummary,
    precision_record,
    summarise,
)
from dialsum.prompt import resolve_topic_policy
from dialsum.resume import check_checkpoint_safe, resume_config, training_finished
from dialsum.rundir import (
    CHECKPOINT_DIR,
    CONFIG_FILE,
    METRICS_FILE,
    MODEL_DIR,
    MODEL_STAGING_DIR,
    SPIKES_FILE,
    SUMMARY_FILE,
    TRAINER_STATE_FILE,
    WANDB_PARENT,
    append_resume,
    check_run_dir,
    checkpoint_problem,
    checkpoint_step,
    clear_failed_start,
    default_run_dir,
    drop_metrics_after,
    file_digests,
    find_checkpoint,
    model_problem,
    move_aside,
    summary_rows,
    write_env,
)
from dialsum.trainer import build_trainer
from dialsum.writer import write_json

console = Console(stderr=True)


# ---------------------------------------------------------------- run directory and resume


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
    incomplete: list[tuple[Path, str]] = field(default_factory=list)  # newer checkpoints a kill cut short
    finish_only: bool = False  # trained to the end; only model/ is to be written from the checkpoints
    done: bool = False  # trained to the end and model/ is complete (`dialsum run --resume` goes on from there)


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
    train_sources: dict[str, int]


def train(
    config: Config,
    config_path: str | Path | None = None,
    output_dir: str | Path | None = None,
    resume: bool = False,
    overrides: list[str] | None = None,
    finished_ok: bool = False,
    command: str = "train",
) -> Path:
    """Train per `config`; returns the run directory (config.yaml, env.json, metrics.jsonl, model/, summary.json).

    On resume the run's saved config.yaml is the truth; `overrides` (the --set list) are applied to it when their
    keys are safe to change mid-run (RESUME_SAFE_KEYS), and any other key is an error. Every stage before
    `_open_run_dir` writes nothing, so bad data, a bad model id or a missing GPU leave nothing behind."""
    start = _start_run(config, config_path, output_dir, resume, list(overrides or []), finished_ok)
    if start.done:  # `finished_ok`: a run whose training is complete goes on to its next step
        return start.run_dir
    data = _prepare_data(start.config)
    model = _load_model(data.config, data.tokenizer)
    trainer = _open_run_dir(start, data, model)
    _fit_and_save(trainer, start, data, command)
    return start.run_dir


RESOLVED_AUTO = ("prompt.topic",)  # keys whose 'auto' the run's config.yaml holds resolved


def _start_run(
    config: Config,
    config_path: str | Path | None,
    output_dir: str | Path | None,
    resume: bool,
    overrides: list[str],
    finished_ok: bool = False,
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
    checkpoint, incomplete = find_checkpoint(run_dir) if resume else (None, [])
    finished_at, finish_only = None, False
    if resume:
        if checkpoint is None:
            cut = f" (only incomplete ones: {', '.join(p.name for p, _ in incomplete)})" if incomplete else ""
            raise RunDirError(
                f"{run_dir}: --resume found no complete checkpoint under {CHECKPOINT_DIR}/{cut}; "
                "run the same command without --resume to start afresh in it"
            )
        given = config
        config = resume_config(run_dir, overrides)
        saved = flatten(config.to_dict())
        set_keys = {o.partition("=")[0].strip() for o in overrides}  # applied, so not 'ignored'
        # 'auto' settings are saved resolved (prompt.topic=auto -> always/never): an unchanged 'auto' is no change
        ignored = sorted(
            k
            for k, v in flatten(given.to_dict()).items()
            if saved.get(k) != v and not (k in RESOLVED_AUTO and v == "auto") and k not in set_keys
        )
        if ignored and is_main:
            console.print(
                f"[yellow]resume:[/] the run's {CONFIG_FILE} is used; the given config differs at "
                f"{', '.join(ignored)} (not applied: pass safe keys with --set)"
            )
        if overrides and is_main:
            console.print(f"resume: applying {', '.join(overrides)}")
        finished_at = training_finished(checkpoint, config, overrides)
        problem = model_problem(run_dir / MODEL_DIR) if finished_at is not None else None
        if finished_at is not None and problem is None:
            if not finished_ok:
                raise RunDirError(
                    f"{checkpoint}: the run already finished at step {finished_at}; to train further, raise "
                    "training.max_steps or training.num_train_epochs with --set on --resume"
                )
            return RunStart(run_dir, config, resume, reuse, checkpoint, overrides, is_main, done=True)
        if finished_at is not None:  # trained to the end, but the final save of model/ was cut short
            finish_only = True
            if is_main:
                console.print(
                    f"[yellow]resume:[/] training finished at step {finished_at} but {MODEL_DIR}/ is {problem}; "
                    f"writing {MODEL_DIR}/ from the checkpoints, without training"
                )
        check_checkpoint_safe(checkpoint)
    if config.data.train is None:
        raise ConfigError("data.train is not set: training needs a training file")
    # an augmented file holding a dev or test dialogue is refused before anything loads or is written
    check_training_leaks(config.data.train, config.data.dev, config.data.test, config.augment)
    check_launcher_precision(config)
    warning = precision_warning(config)
    if warning and is_main:
        console.print(f"[yellow]warning:[/] {warning}")
    return RunStart(run_dir, config, resume, reuse, checkpoint, overrides, is_main, incomplete, finish_only)


def data_warnings(config: Config, train_dialogues: list[Dialogue], dev_dialogues: list[Dialogue]) -> list[str]:
    """Legal but suspicious input, one line each: untagged dialogues, dev rows that are also training rows (their
    scores are not held out), evaluation or checkpoint steps with no dev data to evaluate on."""
    lines = []
    train_files = " + ".join(map(str, data_files(config.data.train)))
    for path, dialogues in ((train_files, train_dialogues), (config.data.dev, dev_dialogues)):
        ids = untagged(dialogues)
        if ids:
            lines.append(
                f"{path}: {len(ids)} dialogue(s) have no '#PersonN#:' turn tag and are read as one untagged text "
                f"(e.g. {', '.join(ids[:3])})"
            )
    seen = {_dialogue_text(d) for d in train_dialogues}
    leaked = [d.id for d in dev_dialogues if _dialogue_text(d) in seen]
    if leaked:
        lines.append(
            f"{config.data.dev}: {len(leaked)} of {len(dev_dialogues)} dev dialogues are also in {train_files}; "
            "dev scores and checkpoint selection are not held out"
        )
    explicit = config.training.model_fields_set & {"eval_steps", "save_steps"}
    if not dev_dialogues and "eval_steps" in explicit:
        lines.append("training.eval_steps is set but there is no dev data (data.dev): nothing is evaluated")
    return lines


def _dialogue_text(dialogue: Dialogue) -> str:
    return "\n".join(f"{t.speaker}: {t.utterance}" for t in dialogue.turns) or dialogue.preamble


def _prepare_data(config: Config) -> PreparedData:
    """Read, resolve the prompt's topic policy and the length rule, and encode with labels on the summary only."""
    train_dialogues = load_dialogues(config.data.train, config.data.strip_whitespace)
    dev_dialogues = load_dialogues(config.data.dev, config.data.strip_whitespace) if config.data.dev else []
    for line in data_warnings(config, train_dialogues, dev_dialogues):
        console.print(f"[yellow]warning:[/] {line}")
    unlabeled = [d.id for d in dev_dialogues if not d.references or not d.references[0].strip()]
    if unlabeled:  # no eval loss without a summary; `run` scores only the rows that have one, and says so
        console.print(f"dev: {len(unlabeled)} row(s) without a summary are left out of the eval loss")
        dev_dialogues = [d for d in dev_dialogues if d.id not in set(unlabeled)]
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
    try:
        train_examples, encode_stats = encode_dialogues(tokenizer, train_dialogues, config)
    except DataError as error:  # name the file: the record alone does not say which split
        raise DataError(f"{' + '.join(map(str, data_files(config.data.train)))}: {error}") from None
    dev_examples, dev_stats = (
        encode_dialogues(tokenizer, dev_dialogues, config) if dev_dialogues else ([], EncodeStats())
    )
    console.print(f"train: {encode_stats.describe()}")
    sources = source_counts(config.data.train, encode_stats.skipped_ids)
    if len(sources) > 1:
        console.print("train sources: " + ", ".join(f"{name} {count}" for name, count in sources.items()))
    if dev_dialogues:
        console.print(f"dev:   {dev_stats.describe()}")
    if not train_examples:
        raise ConfigError(f"{config.data.train}: no trainable examples after encoding ({encode_stats.describe()})")
    return PreparedData(config, tokenizer, train_examples, dev_examples, dev_dialogues, encode_stats, notes, sources)


def _load_model(config: Config, tokenizer):
    """Full weights, LoRA or QLoRA; the KV cache off (it breaks packed-sample isolation)."""
    check_model_kind(config)
    model = load_model(config.model.name_or_path, config, for_training=True)
    check_lora_targets(model, config)
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
    if start.is_main:
        for checkpoint, problem in start.incomplete:
            moved = move_aside(checkpoint)
            console.print(
                f"[yellow]resume:[/] {checkpoint.name} is incomplete ({problem}: a save cut short); skipped it and "
                f"moved it aside to {moved.name}"
            )
        if start.finish_only and (run_dir / MODEL_DIR).exists():
            moved = move_aside(run_dir / MODEL_DIR)
            console.print(f"[yellow]resume:[/] the incomplete {MODEL_DIR}/ is kept as {moved.name}")
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
            write_env(
                run_dir,
                precision_record(trainer),
                str(trainer.accelerator.distributed_type.value),
                file_digests(data_files(config.data.train)),
            )
    state.wait_for_everyone()
    return trainer


def interrupted_line(run_dir: Path, command: str) -> str:
    """What Ctrl-C prints: the run was interrupted, and the exact command that continues it."""
    resume = f"dialsum {command} {run_dir / CONFIG_FILE} --resume --output-dir {run_dir}"
    if find_checkpoint(run_dir)[0] is None and command == "train":
        return f"interrupted before the first checkpoint of {run_dir}; rerun the same command (the directory is reused)"
    return f"interrupted: {run_dir}; continue it with: {resume}"


def _load_finished_state(trainer, start: RunStart) -> None:
    """A run trained to the end whose model/ save was cut short: the trainer state and the weights model/ would
    have held (the best checkpoint when one is selected, else the last) come back from the checkpoints."""
    from transformers.trainer_callback import TrainerState

    trainer.state = TrainerState.load_from_json(str(Path(start.checkpoint) / TRAINER_STATE_FILE))
    weights = start.checkpoint
    best = trainer.state.best_global_step
    if trainer.args.load_best_model_at_end and best:
        candidate = start.run_dir / CHECKPOINT_DIR / f"checkpoint-{best}"
        weights = str(candidate) if checkpoint_problem(candidate) is None else weights
    trainer._load_from_checkpoint(weights)
    console.print(f"resume: {MODEL_DIR}/ is written from {Path(weights).name}")


_WANDB_DIRS_SET: set[str] = set()  # the WANDB_DIR values dialsum set (a user's own WANDB_DIR is kept)


def _place_wandb(run_dir: Path) -> None:
    """W&B's files (online, or WANDB_MODE=offline) in the run directory: run_dir/wandb/; project 'dialsum'."""
    current = os.environ.get("WANDB_DIR")
    if current is None or current in _WANDB_DIRS_SET:
        os.environ["WANDB_DIR"] = str((run_dir / WANDB_PARENT).resolve())
        _WANDB_DIRS_SET.add(os.environ["WANDB_DIR"])
    os.environ.setdefault("WANDB_PROJECT", "dialsum")


def _fit_and_save(trainer, start: RunStart, data: PreparedData, command: str = "train") -> None:
    """Train (from the last checkpoint on resume), save model/, write and print the summary."""
    run_dir = start.run_dir
    if start.checkpoint and start.is_main:
        step = checkpoint_step(start.checkpoint)
        unreadable = sum(drop_metrics_after(run_dir / name, step) for name in (METRICS_FILE, SPIKES_FILE))
        if unreadable:
            console.print(
                f"[yellow]resume:[/] dropped {unreadable} unreadable log line(s) (left by the interrupted run)"
            )
    if start.finish_only:
        _load_finished_state(trainer, start)
    else:
        if "wandb" in data.config.logging.report_to:
            _place_wandb(run_dir)
        try:
            trainer.train(resume_from_checkpoint=start.checkpoint)
        except KeyboardInterrupt:
            raise Interrupted(interrupted_line(run_dir, command)) from None
        finally:
            if "wandb" in data.config.logging.report_to:  # one W&B run per training run (kfold trains several)
                import wandb

                if wandb.run is not None:
                    wandb.finish()
    save_final_model(trainer, data.tokenizer, run_dir)
    if trainer.is_world_process_zero():
        summary = summarise(
            trainer, run_dir, data.config, data.encode_stats, len(data.dev_examples), data.template_notes
        )
        summary.train_sources = data.train_sources
        write_json(run_dir / SUMMARY_FILE, asdict(summary))
        print_summary(summary)
