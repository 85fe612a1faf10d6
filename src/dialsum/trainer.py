"""The HF trainer a run trains with: TrainingArguments from the config (the baseline recipe, checkpointing under
the name the installed transformers knows), the LoRA config, and TRL's SFTTrainer (decoder-only) or Seq2SeqTrainer
with every dialsum mixin (monitor, ROUGE at each evaluation, warmup, packed batches) given at construction."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from dialsum.config import Config
from dialsum.data import Dialogue
from dialsum.errors import ConfigError
from dialsum.models import (
    compute_dtype,
    has_cuda,
)
from dialsum.monitor import (
    DialsumTrainerMixin,
    MonitorMixin,
    RougeEvalMixin,
    TiedWeightsMixin,
    TrainerExtras,
    WarmupRatioMixin,
)
from dialsum.packing import PackedBatchesMixin
from dialsum.rundir import (
    CHECKPOINT_DIR,
)


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
        # training.warmup_steps as given; a ratio becomes steps once the step count is known (WarmupRatioMixin)
        warmup_steps=t.warmup_steps or 0,
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
        (
            DialsumTrainerMixin,
            RougeEvalMixin,
            MonitorMixin,
            TiedWeightsMixin,
            WarmupRatioMixin,
            PackedBatchesMixin,
            base,
        ),
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
