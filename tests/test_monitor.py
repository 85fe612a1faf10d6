"""monitor.py: count_tokens on batches whose padding is known (what the tokens/s and real-token-fraction logs count)."""

from __future__ import annotations

import pytest
import torch

from dialsum.monitor import count_tokens

LENGTHS = (3, 5, 2)  # 10 real tokens; padded to 5 per row: 15 positions


def _causal_examples(lengths=LENGTHS) -> list[dict]:
    return [{"input_ids": list(range(1, n + 1)), "labels": [-100] * (n - 1) + [7]} for n in lengths]


def test_padded_causal_batch_counts_padding_as_processed_only():
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    batch = DataCollatorForLanguageModeling(pad_token_id=0)(_causal_examples())
    assert batch["input_ids"].shape == (3, 5)
    counts = count_tokens(batch)
    # prompt tokens are real tokens too (the model computes them); only padding is waste
    assert (counts.real, counts.processed) == (10, 15)


def test_padding_free_packed_batch_has_no_padding():
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    batch = DataCollatorForLanguageModeling(pad_token_id=0, padding_free=True)(_causal_examples())
    assert batch["input_ids"].shape == (1, 10) and "attention_mask" not in batch
    counts = count_tokens(batch)
    assert (counts.real, counts.processed) == (10, 10)


@pytest.mark.parametrize(
    "label_lengths, expected",
    [
        ((3, 1), (6 + 4, 8 + 6)),  # labels shorter than the inputs: a different shape
        ((4, 1), (6 + 5, 8 + 8)),  # labels padded to the inputs' shape: still counted, through decoder_input_ids
    ],
)
def test_seq2seq_batch_counts_encoder_and_decoder_tokens(label_lengths, expected):
    """As the seq2seq trainer builds it: DataCollatorForSeq2Seq with the model, so decoder_input_ids are present."""
    from transformers import AutoTokenizer, BartConfig, BartForConditionalGeneration, DataCollatorForSeq2Seq

    from dialsum.tiny import tiny_model_cached

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_cached("bart"))
    torch.manual_seed(0)
    model = BartForConditionalGeneration(
        BartConfig(
            vocab_size=len(tokenizer),
            d_model=8,
            encoder_layers=1,
            decoder_layers=1,
            encoder_attention_heads=1,
            decoder_attention_heads=1,
            encoder_ffn_dim=8,
            decoder_ffn_dim=8,
            max_position_embeddings=16,
            pad_token_id=tokenizer.pad_token_id,
            decoder_start_token_id=tokenizer.eos_token_id,
        )
    )
    examples = [
        {"input_ids": [5] * n, "attention_mask": [1] * n, "labels": [6] * m} for n, m in zip((4, 2), label_lengths)
    ]
    batch = DataCollatorForSeq2Seq(tokenizer, model=model, label_pad_token_id=-100)(examples)
    assert "decoder_input_ids" in batch and batch["input_ids"].shape == (2, 4)
    counts = count_tokens(batch)
    assert (counts.real, counts.processed) == expected
