"""Prompt and label encoding: the loss falls on the summary (+ end of turn) and nothing else."""

from __future__ import annotations

import pytest

from conftest import SAMPLE
from dialsum.config import config_from_dict
from dialsum.data import Dialogue, Turn, load_dialogues
from dialsum.encode import (
    IGNORE_INDEX,
    TargetTooLong,
    add_seq2seq_special_tokens,
    check_chat_template,
    encode_causal,
    encode_dialogues,
    encode_prompt,
    encode_seq2seq,
    end_of_turn_token,
    ensure_pad_token,
    render_prompt,
)
from dialsum.models import load_tokenizer
from dialsum.prompt import build_messages, user_message


def config_for(model_path, **training):
    kind = "seq2seq" if "bart" in str(model_path) else "causal"
    return config_from_dict(
        {"model": {"name_or_path": str(model_path), "kind": kind}, "training": {"max_length": 1024, **training}}
    )


@pytest.fixture(scope="module")
def dev(real_dev_path):
    return load_dialogues(real_dev_path)


@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3"])
def test_unmasked_labels_decode_to_exactly_summary_plus_end_of_turn(arch, request, dev):
    from dialsum.tiny import tiny_model_cached

    path = tiny_model_cached(arch)
    config = config_for(path)
    tokenizer = load_tokenizer(path, config)
    ensure_pad_token(tokenizer)
    end = end_of_turn_token(tokenizer)
    assert end == {"llama": "<|eot_id|>", "qwen2": "<|im_end|>", "qwen3": "<|im_end|>"}[arch]
    for record in dev[:5]:
        example = encode_causal(tokenizer, record, config)[0]
        trained = [t for t, label in zip(example["input_ids"], example["labels"]) if label != IGNORE_INDEX]
        assert tokenizer.decode(trained) == record.references[0].strip() + end
        # the prompt part is exactly the generation prompt, so training and inference see the same tokens
        n_prompt = example["labels"].count(IGNORE_INDEX)
        assert example["input_ids"][:n_prompt] == encode_prompt(tokenizer, record, config)
        assert example["labels"][:n_prompt] == [IGNORE_INDEX] * n_prompt


def test_prompt_has_conversation_lines_and_question():
    record = Dialogue(
        "d1", [Turn("#Person1#", "안녕하세요."), Turn("#Person2#", "#PhoneNumber#로 연락 주세요.")], topic="전화"
    )
    config = config_for("x")
    text = user_message(record, config.prompt)
    assert text == (
        "[Conversation]\n#Person1#: 안녕하세요.\n#Person2#: #PhoneNumber#로 연락 주세요.\n\n"
        "[Question]\n위 전화 주제에 대한 대화를 요약해주세요."
    )
    messages = build_messages(record, config.prompt)
    assert messages[0] == {"role": "system", "content": config.prompt.system}
    config.prompt.speaker_style = "korean"
    record.topic = None
    assert user_message(record, config.prompt).startswith("[Conversation]\n화자1: 안녕하세요.\n화자2:")
    assert user_message(record, config.prompt).endswith("위 대화 주제에 대한 대화를 요약해주세요.")


def test_dcs_topic_comes_from_subject_keyword():

    sample = SAMPLE / "dcs_sample.jsonl"
    record = load_dialogues(sample)[0]
    config = config_for("x")
    assert f"위 {record.topic} 주제에 대한" in user_message(record, config.prompt)
    assert record.topic


def test_a_dialogue_20x_too_long_keeps_its_whole_summary(tiny_llama, dev):
    config = config_for(tiny_llama, max_length=512)
    tokenizer = load_tokenizer(tiny_llama, config)
    ensure_pad_token(tokenizer)
    record = dev[0]
    long = Dialogue("long", record.turns * 40, record.topic, record.references)
    normal = encode_causal(tokenizer, record, config)[0]
    assert len(tokenizer(render_prompt(tokenizer, build_messages(long, config.prompt)))["input_ids"]) > 20 * 512 // 2
    example = encode_causal(tokenizer, long, config)[0]
    assert len(example["input_ids"]) <= 512
    trained = [t for t, label in zip(example["input_ids"], example["labels"]) if label != IGNORE_INDEX]
    assert trained == [t for t, label in zip(normal["input_ids"], normal["labels"]) if label != IGNORE_INDEX]
    text = tokenizer.decode(example["input_ids"])
    assert "[Question]" in text and record.turns[0].utterance in text
    examples, stats = encode_dialogues(tokenizer, [record, long], config)
    assert stats.trimmed == 1 and stats.turns_cut > 0 and stats.encoded == 2


def test_summary_that_cannot_fit_is_an_error_or_a_counted_skip(tiny_llama, dev):
    config = config_for(tiny_llama, max_length=256)
    config.generation.max_new_tokens = 32  # the answer budget the prompt leaves room for (encode.prompt_budget)
    tokenizer = load_tokenizer(tiny_llama, config)
    ensure_pad_token(tokenizer)
    record = Dialogue("huge", dev[0].turns, "x", [dev[0].references[0] * 10])
    with pytest.raises(TargetTooLong, match="huge"):
        encode_causal(tokenizer, record, config)[0]
    config.training.skip_too_long = True
    examples, stats = encode_dialogues(tokenizer, [record, dev[1]], config)
    assert stats.skipped_ids == ["huge"] and "1 skipped" in stats.describe()


def test_pad_token_is_never_eos(tiny_llama):
    config = config_for(tiny_llama)
    tokenizer = load_tokenizer(tiny_llama, config)
    ensure_pad_token(tokenizer)
    assert tokenizer.pad_token is not None and tokenizer.pad_token_id != tokenizer.eos_token_id


def test_template_quirks_are_reported(tiny_llama, tiny_qwen2):
    from dialsum.tiny import tiny_model_cached

    config = config_for(tiny_llama)
    llama = check_chat_template(load_tokenizer(tiny_llama, config), config.prompt)
    assert llama.ok and any("date" in note for note in llama.notes)
    qwen3 = check_chat_template(load_tokenizer(tiny_model_cached("qwen3"), config), config.prompt)
    assert any("think" in line for line in qwen3.notes + qwen3.problems)
    config.prompt.system = ""
    qwen2 = check_chat_template(load_tokenizer(tiny_qwen2, config), config.prompt)
    assert any("default system prompt" in note for note in qwen2.notes)


def test_tokenizer_without_template_uses_documented_fallback(tiny_llama, dev):
    config = config_for(tiny_llama)
    tokenizer = load_tokenizer(tiny_llama, config)
    tokenizer.chat_template = None
    ensure_pad_token(tokenizer)
    text = render_prompt(tokenizer, build_messages(dev[0], config.prompt))
    assert "### User:\n[Conversation]" in text and text.endswith("### Assistant:\n")
    example = encode_causal(tokenizer, dev[0], config)[0]
    trained = [t for t, label in zip(example["input_ids"], example["labels"]) if label != IGNORE_INDEX]
    assert tokenizer.decode(trained) == dev[0].references[0].strip() + tokenizer.eos_token


def test_seq2seq_adds_speaker_and_mask_tokens_and_labels_the_summary(tiny_bart, dev):
    config = config_for(tiny_bart)
    tokenizer = load_tokenizer(tiny_bart, config)
    added = add_seq2seq_special_tokens(tokenizer, dev)
    assert "#Person1#" in added or "#Person1#" in tokenizer.get_vocab()
    ids = tokenizer("#Person1#: 안녕", add_special_tokens=False)["input_ids"]
    assert tokenizer.convert_ids_to_tokens(ids[0]) == "#Person1#"
    example = encode_seq2seq(tokenizer, dev[0], config)[0]
    assert tokenizer.decode(example["labels"], skip_special_tokens=True) == dev[0].references[0].strip()
    # koBART's tokenizer adds no </s>: without it appended the model would never learn to stop
    assert example["labels"][-1] == tokenizer.eos_token_id and example["input_ids"][-1] == tokenizer.eos_token_id
    assert dev[0].turns[0].utterance in tokenizer.decode(example["input_ids"])


def test_inference_prompt_is_trimmed_by_the_training_rule_and_keeps_the_preamble(tiny_llama, dev):
    """A dialogue cut at training is cut by the same turns at inference, and its preamble (text before the
    first speaker tag) survives the cut. Mutations caught: inference budget max_length - max_new_tokens while
    training uses max_length - len(summary); the preamble dropped once turns are cut."""
    from dialsum.encode import encode_inference_inputs

    config = config_for(tiny_llama, max_length=512)
    config.generation.max_new_tokens = 64
    tokenizer = load_tokenizer(tiny_llama, config)
    ensure_pad_token(tokenizer)
    long = Dialogue("long", dev[0].turns * 12, dev[0].topic, dev[0].references, preamble="[회의실에서]")
    example = encode_causal(tokenizer, long, config)[0]
    trained_prompt = [t for t, label in zip(example["input_ids"], example["labels"]) if label == IGNORE_INDEX]
    inputs, stats = encode_inference_inputs(tokenizer, [dev[0], long], config, "causal")
    assert inputs[1] == trained_prompt  # byte for byte the prompt training used
    assert stats.trimmed == 1 and stats.turns_cut > 0
    assert "[회의실에서]" in tokenizer.decode(inputs[1]) and len(inputs[1]) <= 512 - 64
    # a dialogue that fits untrimmed at training is not trimmed at inference either
    short = Dialogue("short", dev[0].turns * 5, dev[0].topic, dev[0].references)
    fits = encode_causal(tokenizer, short, config)[0]
    inputs, stats = encode_inference_inputs(tokenizer, [short], config, "causal")
    assert inputs[0] == [t for t, label in zip(fits["input_ids"], fits["labels"]) if label == IGNORE_INDEX]


def test_closer_comes_from_the_template_when_eos_is_not_it(tiny_llama, dev):
    """A base Llama-3 tokenizer names <|end_of_text|> as EOS while its template closes turns with <|eot_id|>.
    Mutation caught: the closer looked up among the named special tokens (falls back to EOS)."""
    config = config_for(tiny_llama)
    tokenizer = load_tokenizer(tiny_llama, config)
    tokenizer.eos_token = "<|end_of_text|>"
    ensure_pad_token(tokenizer)
    assert end_of_turn_token(tokenizer) == "<|eot_id|>"
    example = encode_causal(tokenizer, dev[0], config)[0]
    assert tokenizer.convert_ids_to_tokens(example["labels"][-1]) == "<|eot_id|>"
    assert tokenizer.pad_token not in ("<|eot_id|>", "<|end_of_text|>")


def test_an_answer_budget_that_leaves_no_prompt_is_one_config_error(tiny_llama, dev):
    """max_new_tokens >= max_length: one ConfigError naming both keys, not a TargetTooLong for the first record.
    Mutation caught: the check in encode_dialogues removed."""
    from dialsum.errors import ConfigError

    config = config_for(tiny_llama, max_length=128)
    config.generation.max_new_tokens = 128
    tokenizer = load_tokenizer(tiny_llama, config)
    with pytest.raises(ConfigError, match="generation.max_new_tokens=128.*training.max_length=128"):
        encode_dialogues(tokenizer, dev[:2], config)
