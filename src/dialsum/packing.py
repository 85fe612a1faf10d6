"""Packed batches that cost no more than padded ones on any attention backend, and that keep the recipe.

Two layouts for the packed rows TRL's best-fit-decreasing packer builds (each row: several examples,
at most `max_length` tokens, `seq_lengths` saying where each example ends):

- **rows** (sdpa, eager): each packed row stays a batch row, B × L (L = the longest row of the micro-batch).
  `position_ids` restart at 0 for every example and there is *no* attention mask, so transformers 5 detects
  the packed sequences row by row and builds a B × L × L block-diagonal mask. A shorter row is padded with
  one dummy segment: its positions restart at 0 (a segment of its own, seen by no real token) and its labels
  are -100 (no loss). TRL's padding-free collator instead flattens the micro-batch into one row of B·L
  tokens, and a dense backend then pays a (B·L)² mask: 8 rows of 1024 attend over 8,192 positions.
- **flat** (flash-attention): TRL's flattened row, free there because varlen kernels skip the masked blocks.

Isolation needs `use_cache=False` (TRL passes it; dialsum also sets `model.config.use_cache = False`): a KV
cache or an attention mask makes transformers treat the row as one sequence, and samples attend to each other.

The recipe: a packed row holds ~2 examples of the real dev set at 1024 tokens, so counting
`per_device_train_batch_size` in rows would make an optimizer step see ~2× the configured examples (and
~2× fewer optimizer steps). `ExampleBudgetBatchSampler` groups rows so that each micro-batch holds
`per_device_train_batch_size` *examples* on average; `training.packing_batch_unit: rows` opts out.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Literal

import torch
from torch.utils.data import Sampler

Layout = Literal["rows", "flat"]
FLAT_ATTENTION = ("flash_attention_2", "flash_attention_3")  # varlen kernels: the flattened row is free
EXAMPLES_KEY = "dialsum_examples"  # batch bookkeeping the collator adds; popped before the model sees the batch
REAL_TOKENS_KEY = "dialsum_real_tokens"


def packing_layout(attn_implementation: str | None) -> Layout:
    """'flat' only where varlen kernels make the flattened batch free; 'rows' on dense backends (sdpa, eager)."""
    return "flat" if attn_implementation in FLAT_ATTENTION else "rows"


def segment_positions(seq_lengths: list[int]) -> list[int]:
    """Position ids restarting at 0 for each segment: [3, 2] -> [0, 1, 2, 0, 1]."""
    return [position for length in seq_lengths for position in range(length)]


@dataclass
class PackedBatchCollator:
    """Collates packed rows (`input_ids`, `labels`, `seq_lengths`) in the given layout, without an attention mask.

    Adds two bookkeeping entries (`dialsum_examples`, `dialsum_real_tokens`) that `pop_batch_meta` removes
    before the forward pass, so the monitor counts examples and real tokens without guessing from padding.
    """

    pad_token_id: int
    layout: Layout = "rows"

    def __call__(self, rows: list[dict]) -> dict:
        seq_lengths = [list(row["seq_lengths"]) for row in rows]
        meta = {
            EXAMPLES_KEY: torch.tensor(sum(len(s) for s in seq_lengths)),
            REAL_TOKENS_KEY: torch.tensor(sum(len(row["input_ids"]) for row in rows)),
        }
        if self.layout == "flat":
            from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

            batch = DataCollatorForLanguageModeling(pad_token_id=self.pad_token_id, padding_free=True)(
                [
                    {"input_ids": r["input_ids"], "labels": r["labels"], "seq_lengths": s}
                    for r, s in zip(rows, seq_lengths)
                ]
            )
            return {**batch, **meta}
        width = max(len(row["input_ids"]) for row in rows)
        input_ids, labels, positions = [], [], []
        for row, lengths in zip(rows, seq_lengths):
            tail = width - len(row["input_ids"])
            segments = lengths + ([tail] if tail else [])  # the padding is a segment of its own
            input_ids.append(list(row["input_ids"]) + [self.pad_token_id] * tail)
            labels.append(list(row["labels"]) + [-100] * tail)
            positions.append(segment_positions(segments))
        batch = {
            "input_ids": torch.tensor(input_ids, dtype=torch.long),
            "labels": torch.tensor(labels, dtype=torch.long),
            "position_ids": torch.tensor(positions, dtype=torch.long),
        }
        # The first token of a segment would be predicted from the previous segment's last token: no loss there.
        batch["labels"][batch["position_ids"] == 0] = -100
        return {**batch, **meta}


def pop_batch_meta(inputs: dict) -> dict[str, int]:
    """Remove the collator's bookkeeping from a batch (in place); {} for batches without it."""
    return {key: int(inputs.pop(key)) for key in (EXAMPLES_KEY, REAL_TOKENS_KEY) if key in inputs}


# ---------------------------------------------------------------- micro-batches of a fixed number of examples


def example_budget_batches(examples_per_row: list[int], examples_per_batch: int, order: list[int]) -> list[list[int]]:
    """Cut `order` (row indices) into contiguous micro-batches that hold `examples_per_batch` examples on average.

    The number of micro-batches is fixed by the data, M = round(examples / examples_per_batch) (at least 1, at
    most one per row), and cut j falls where the running example count first reaches j · examples / M: the error
    never accumulates, so the mean is the target to within one row and every epoch has the same M.
    """
    rows = len(order)
    total = sum(examples_per_row)
    if rows == 0:
        return []
    m = min(rows, max(1, round(total / examples_per_batch)))
    running, cuts, j = 0, [], 1
    for i, row in enumerate(order):
        running += examples_per_row[row]
        while j < m and running >= j * total / m:
            cuts.append(i + 1)
            j += 1
    # every micro-batch gets at least one row (only matters when single rows hold more than the target)
    bounds = [0]
    for j, cut in enumerate(cuts, start=1):
        bounds.append(min(max(cut, bounds[-1] + 1), rows - (m - j)))
    bounds.append(rows)
    return [order[a:b] for a, b in zip(bounds, bounds[1:])]


GROUP_WINDOW = 16  # micro-batches' worth of shuffled rows that are sorted by length together


def epoch_batches(
    examples_per_row: list[int], row_lengths: list[int] | None, examples_per_batch: int, rng: random.Random
) -> list[list[int]]:
    """One epoch of micro-batches: rows shuffled; within windows of `GROUP_WINDOW` micro-batches, sorted by length
    so that the rows of a micro-batch are about as long as each other (the rows layout pads them to the longest);
    cut by the example budget; the micro-batches shuffled again."""
    order = list(range(len(examples_per_row)))
    rng.shuffle(order)
    if row_lengths is not None and order:
        rows_per_batch = max(1, round(len(order) * examples_per_batch / max(1, sum(examples_per_row))))
        window = GROUP_WINDOW * rows_per_batch
        order = [
            i
            for start in range(0, len(order), window)
            for i in sorted(order[start : start + window], key=lambda i: -row_lengths[i])
        ]
    batches = example_budget_batches(examples_per_row, examples_per_batch, order)
    rng.shuffle(batches)
    return batches


class ExampleBudgetBatchSampler(Sampler[list[int]]):
    """Shuffles packed rows each epoch (seed + epoch) and yields micro-batches of ~`examples_per_batch` examples,
    grouping rows of similar length when `row_lengths` is given (`epoch_batches`)."""

    def __init__(
        self, examples_per_row: list[int], examples_per_batch: int, seed: int, row_lengths: list[int] | None = None
    ):
        self.examples_per_row = list(examples_per_row)
        self.row_lengths = row_lengths
        self.examples_per_batch = examples_per_batch
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def batches(self) -> list[list[int]]:
        rng = random.Random(self.seed + self.epoch)
        return epoch_batches(self.examples_per_row, self.row_lengths, self.examples_per_batch, rng)

    def __iter__(self):
        yield from self.batches()

    def __len__(self) -> int:
        total = sum(self.examples_per_row)
        return min(len(self.examples_per_row), max(1, round(total / self.examples_per_batch))) if total else 0


def example_budget_note(examples_per_row: list[int], examples_per_batch: int) -> str | None:
    """A warning when micro-batches cannot hold ~`examples_per_batch` examples (rows hold more than that)."""
    total, batches = sum(examples_per_row), len(ExampleBudgetBatchSampler(examples_per_row, examples_per_batch, 0))
    mean = total / batches if batches else 0.0
    if batches and abs(mean / examples_per_batch - 1) > 0.1:
        return (
            f"packing: a packed row holds {total / len(examples_per_row):.1f} examples on average, so a "
            f"micro-batch "
            f"holds {mean:.1f} examples, not training.per_device_train_batch_size={examples_per_batch}; lower "
            "training.max_length or raise the batch size to keep the recipe's effective batch"
        )
    return None


# ---------------------------------------------------------------- what one epoch looks like, without a model


@dataclass
class EpochPlan:
    """Steps, examples and tokens of one training epoch for a list of example lengths (no model, no GPU)."""

    examples: int
    real_tokens: int
    packing: bool
    unit: str  # what per_device_train_batch_size counts: "examples" or "rows"
    layout: str  # "padded", "rows" or "flat"
    rows: int  # packed rows (packing) or examples (padded)
    micro_batches: int  # per process
    optimizer_steps: int
    examples_per_step: float
    max_rows_per_micro_batch: int
    max_tokens_per_micro_batch: int  # positions of the largest micro-batch: what activation memory must hold
    processed_tokens: int  # positions the model computes, padding included
    attention_pairs: int  # query-key pairs the attention kernel computes (see plan_epoch)

    @property
    def padding_waste(self) -> float:
        return 1 - self.real_tokens / self.processed_tokens if self.processed_tokens else 0.0


def plan_epoch(
    lengths: list[int],
    max_length: int,
    per_device_batch: int,
    accumulation: int,
    world_size: int = 1,
    packing: bool = True,
    unit: str = "examples",
    layout: Layout = "rows",
    seed: int = 0,
) -> EpochPlan:
    """Simulate one epoch: TRL's best-fit-decreasing packing (`stats.pack_lengths`), dialsum's micro-batching, the
    layout's padding. `attention_pairs` counts what the kernel computes: a dense kernel (sdpa/eager with a
    mask, padded or packed rows) computes every query-key pair of each B × L × L block, masked-out ones included;
    a varlen kernel (flash, flat layout) computes the causal triangle of each example, n(n+1)/2; 'flat-dense' is
    the flattened row on a dense kernel (TRL's layout on sdpa): one (B·L)² block per micro-batch."""
    from dialsum.stats import pack_lengths

    lengths = [min(n, max_length) for n in lengths]
    rng = random.Random(seed)
    if packing:
        rows = pack_lengths(lengths, max_length)
        if unit == "examples":
            batches = epoch_batches([len(r) for r in rows], [sum(r) for r in rows], per_device_batch, rng)
        else:  # the Trainer's own sampler: shuffled rows, per_device_batch at a time
            order = list(range(len(rows)))
            rng.shuffle(order)
            batches = [order[i : i + per_device_batch] for i in range(0, len(order), per_device_batch)]
        batches = [[rows[i] for i in batch] for batch in batches]
        n_rows = len(rows)
    else:
        order = list(lengths)
        rng.shuffle(order)
        n_rows = len(order)
        batches = [[[n] for n in order[i : i + per_device_batch]] for i in range(0, len(order), per_device_batch)]
    processed = pairs = biggest = 0
    for batch in batches:
        if packing and layout == "flat":
            positions = sum(map(sum, batch))
            pairs += sum(n * (n + 1) // 2 for row in batch for n in row)
        elif packing and layout == "flat-dense":  # TRL's flattened row on sdpa/eager: one (B·L)² mask
            positions = sum(map(sum, batch))
            pairs += positions * positions
        else:
            width = max(sum(row) for row in batch)
            positions = width * len(batch)
            pairs += len(batch) * width * width
        processed += positions
        biggest = max(biggest, positions)
    micro = math.ceil(len(batches) / world_size)
    steps = max(1, micro // accumulation + int(micro % accumulation > 0))
    return EpochPlan(
        examples=len(lengths),
        real_tokens=sum(lengths),
        packing=packing,
        unit=unit if packing else "examples",
        layout=layout if packing else "padded",
        rows=n_rows,
        micro_batches=micro,
        optimizer_steps=steps,
        examples_per_step=len(lengths) / steps,
        max_rows_per_micro_batch=max((len(b) for b in batches), default=0),
        max_tokens_per_micro_batch=biggest,
        processed_tokens=processed,
        attention_pairs=pairs,
    )


# ---------------------------------------------------------------- the trainer side


class PackedBatchesMixin:
    """Trainer mixin: with packing counted in examples, the train dataloader draws micro-batches from
    `ExampleBudgetBatchSampler`; either way it records the micro-batches per epoch (for steps per epoch)."""

    examples_per_micro_batch: int | None = None  # None: the Trainer's own sampler (padded, or packing in rows)
    micro_batches_per_epoch: int | None = None

    def get_train_dataloader(self):
        if self.examples_per_micro_batch is None:
            loader = super().get_train_dataloader()
        else:
            from functools import partial

            from torch.utils.data import DataLoader
            from transformers.trainer_utils import seed_worker

            dataset = self._remove_unused_columns(self.train_dataset, description="Training")
            seq_lengths = dataset["seq_lengths"]
            sampler = ExampleBudgetBatchSampler(
                [len(s) for s in seq_lengths],
                self.examples_per_micro_batch,
                seed=self.args.seed,
                row_lengths=[sum(s) for s in seq_lengths],
            )
            loader = self.accelerator.prepare(
                DataLoader(
                    dataset,
                    batch_sampler=sampler,
                    collate_fn=self.data_collator,
                    num_workers=self.args.dataloader_num_workers,
                    pin_memory=self.args.dataloader_pin_memory,
                    worker_init_fn=partial(
                        seed_worker, num_workers=self.args.dataloader_num_workers, rank=self.args.process_index
                    ),
                )
            )
        self.micro_batches_per_epoch = len(loader)
        return loader

    def _prepare_inputs(self, inputs):
        pop_batch_meta(inputs)  # evaluation batches reach the model through here too
        return super()._prepare_inputs(inputs)

    @property
    def optimizer_steps_per_epoch(self) -> int | None:
        micro, accumulation = self.micro_batches_per_epoch, self.args.gradient_accumulation_steps
        return max(1, micro // accumulation + int(micro % accumulation > 0)) if micro else None
