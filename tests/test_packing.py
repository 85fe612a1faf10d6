"""Packing layout and step accounting without a model: the collator's tensors, micro-batches of a fixed number of
examples, and the epoch simulation behind `dialsum plan` and benchmarks/packing.py."""

from __future__ import annotations

import random

from dialsum.packing import (
    ExampleBudgetBatchSampler,
    PackedBatchCollator,
    example_budget_note,
    packing_layout,
    plan_epoch,
    pop_batch_meta,
)


def test_rows_layout_pads_a_short_row_with_its_own_segment():
    rows = [
        {"input_ids": [1, 2, 3, 4, 5], "labels": [-100, 2, 3, -100, 5], "seq_lengths": [3, 2]},
        {"input_ids": [6, 7, 8], "labels": [-100, 7, 8], "seq_lengths": [3]},
    ]
    batch = PackedBatchCollator(pad_token_id=0, layout="rows")(rows)
    assert pop_batch_meta(batch) == {"dialsum_examples": 3, "dialsum_real_tokens": 8}
    assert set(batch) == {"input_ids", "labels", "position_ids"}  # no attention mask, ever
    assert batch["input_ids"].tolist() == [[1, 2, 3, 4, 5], [6, 7, 8, 0, 0]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 1], [0, 1, 2, 0, 1]]  # the padding restarts at 0
    assert batch["labels"].tolist() == [[-100, 2, 3, -100, 5], [-100, 7, 8, -100, -100]]
    flat = PackedBatchCollator(pad_token_id=0, layout="flat")(rows)
    pop_batch_meta(flat)
    assert flat["input_ids"].shape == (1, 8) and flat["position_ids"].tolist() == [[0, 1, 2, 0, 1, 0, 1, 2]]
    assert "attention_mask" not in flat


def test_layout_follows_the_attention_backend():
    assert packing_layout("sdpa") == "rows" and packing_layout("eager") == "rows"
    assert packing_layout("flash_attention_2") == "flat"


def test_micro_batches_hold_the_target_number_of_examples_every_epoch():
    rng = random.Random(0)
    per_row = [rng.choice([1, 2, 2, 3, 3, 3, 4]) for _ in range(400)]  # ~2.7 examples per packed row
    sampler = ExampleBudgetBatchSampler(per_row, examples_per_batch=8, seed=42)
    orders = []
    for epoch in range(3):
        sampler.set_epoch(epoch)
        batches = list(sampler)
        assert len(batches) == len(sampler) == round(sum(per_row) / 8)  # the same steps every epoch
        assert sorted(i for b in batches for i in b) == list(range(400))  # every row once
        counts = [sum(per_row[i] for i in b) for b in batches]
        assert abs(sum(counts) / len(counts) - 8) < 0.1
        assert max(counts) <= 8 + 4 and min(counts) >= 8 - 4  # never more than one row away from the target
        orders.append([i for b in batches for i in b])
    assert orders[0] != orders[1], "reshuffled each epoch"


def test_a_budget_rows_cannot_meet_is_reported():
    assert example_budget_note([3] * 100, examples_per_batch=1) is not None
    assert example_budget_note([3] * 100, examples_per_batch=8) is None


def test_epoch_plan_counts_what_each_layout_computes():
    lengths = [300, 500, 200, 700, 100, 400] * 10
    padded = plan_epoch(lengths, 1024, 4, 1, packing=False)
    rows = plan_epoch(lengths, 1024, 4, 1, layout="rows")
    flat = plan_epoch(lengths, 1024, 4, 1, layout="flat")
    in_rows = plan_epoch(lengths, 1024, 4, 1, unit="rows")
    assert padded.real_tokens == rows.real_tokens == flat.real_tokens == sum(lengths)
    assert flat.processed_tokens == sum(lengths) and flat.padding_waste == 0
    assert flat.attention_pairs == sum(n * (n + 1) // 2 for n in lengths)
    assert padded.optimizer_steps == rows.optimizer_steps == 15  # 60 examples, 4 per step, packed or not
    assert in_rows.optimizer_steps < padded.optimizer_steps  # counting rows: fewer, bigger steps
    assert padded.padding_waste > rows.padding_waste
