"""Prompts, labels, stop tokens and suppression against the REAL tokenizers in ../shared/models (no weights).

Every test here skips with a reason when ../shared is not beside the project; in CI it is.
"""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path

import pytest

from conftest import ROOT
from dialsum.config import config_from_dict
from dialsum.data import Dialogue, load_dialogues
from dialsum.encode import (
    IGNORE_INDEX,
    add_seq2seq_special_tokens,
    encode_causal,
    encode_prompt,
    encode_seq2seq,
    end_of_turn_token,
    ensure_pad_token,
)

MODELS = ROOT.parent / "shared" / "models"
DATA = ROOT.parent / "shared" / "data" / "dialogsum-ko"
CAUSAL = {
    "llama-3.2-korean-bllossom-3b": "<|eot_id|>",
    "qwen2.5-1.5b-instruct": "<|im_end|>",
    "qwen3-0.6b": "<|im_end|>",
}
# The EOS each family's *base* checkpoint names: not the token its template closes a turn with.
BASE_EOS = {
    "llama-3.2-korean-bllossom-3b": "<|end_of_text|>",
    "qwen2.5-1.5b-instruct": "<|endoftext|>",
    "qwen3-0.6b": "<|endoftext|>",
}


def real_dir(folder: str) -> Path:
    path = MODELS / folder
    if not (path / "tokenizer_config.json").is_file():
        pytest.skip(f"../shared/models/{folder} not present")
    return path


_TOKENIZERS: dict[str, object] = {}


def real_tokenizer(folder: str):
    """A fresh copy each call (tests change eos/pad); loading is cached, the copy is cheap."""
    import copy

    from transformers import AutoTokenizer

    if folder not in _TOKENIZERS:
        _TOKENIZERS[folder] = AutoTokenizer.from_pretrained(str(real_dir(folder)))
    return copy.deepcopy(_TOKENIZERS[folder])


def config_for(folder: str, **prompt):
    kind = "seq2seq" if folder == "kobart" else "causal"
    return config_from_dict({"model": {"name_or_path": str(MODELS / folder), "kind": kind}, "prompt": prompt})


@pytest.fixture(scope="module")
def dev() -> list[Dialogue]:
    path = DATA / "dev.csv"
    if not path.is_file():
        pytest.skip("../shared/data/dialogsum-ko/dev.csv not present")
    return load_dialogues(path)


# ---------------------------------------------------------------- item 2: labels, closer, prompt, BOS, pad


@pytest.mark.parametrize("base", [False, True], ids=["instruct", "base-eos"])
@pytest.mark.parametrize("folder", sorted(CAUSAL))
def test_real_causal_labels_prompt_bos_and_pad(folder, base, dev):
    """Labels decode to exactly summary + the template's closer; the inference prompt is the training prompt
    byte for byte; one BOS; pad is not the closer. `base-eos` gives the tokenizer its base model's EOS, which is
    not what closes a turn. Mutation caught: the closer taken from all_special_tokens (-> EOS for base-eos)."""
    tokenizer = real_tokenizer(folder)
    if base:
        tokenizer.eos_token = BASE_EOS[folder]
    config = config_for(folder)
    ensure_pad_token(tokenizer)
    closer = end_of_turn_token(tokenizer)
    assert closer == CAUSAL[folder]
    assert tokenizer.pad_token_id is not None and tokenizer.pad_token != closer
    for record in dev[:3]:
        example = encode_causal(tokenizer, record, config)[0]
        trained = [t for t, label in zip(example["input_ids"], example["labels"]) if label != IGNORE_INDEX]
        assert tokenizer.decode(trained) == record.references[0].strip() + closer
        prompt = [t for t, label in zip(example["input_ids"], example["labels"]) if label == IGNORE_INDEX]
        assert encode_prompt(tokenizer, record, config) == prompt
        if tokenizer.bos_token_id is not None:
            ids = example["input_ids"]
            assert ids.count(tokenizer.bos_token_id) == 1 and ids[0] == tokenizer.bos_token_id


def test_bllossom_prompt_pins_the_date(dev):
    """Bllossom's template writes 'Today Date' from the clock: training today and predicting tomorrow must give
    the same prompt. Mutation caught: render_prompt without date_string (the clock's date appears)."""
    tokenizer = real_tokenizer("llama-3.2-korean-bllossom-3b")
    text = tokenizer.decode(encode_prompt(tokenizer, dev[0], config_for("llama-3.2-korean-bllossom-3b")))
    assert "Today Date: 26 Jul 2024" in text and time.strftime("%d %b %Y") not in text


def test_real_kobart_labels_end_with_eos_and_tags_are_single_tokens(dev):
    tokenizer = real_tokenizer("kobart")
    config = config_for("kobart")
    add_seq2seq_special_tokens(tokenizer, dev[:50])
    ensure_pad_token(tokenizer)
    assert tokenizer.pad_token == "<pad>" and end_of_turn_token(tokenizer) == "</s>"
    example = encode_seq2seq(tokenizer, dev[0], config)[0]
    assert example["labels"][0] == tokenizer.bos_token_id and example["labels"].count(tokenizer.bos_token_id) == 1
    assert tokenizer.decode(example["labels"][1:]) == dev[0].references[0].strip() + "</s>"
    first = tokenizer("#Person1#은", add_special_tokens=False)["input_ids"][0]
    assert tokenizer.convert_ids_to_tokens(first) == "#Person1#"


# ---------------------------------------------------------------- item 1: topic policy


def _competition_files(tmp_path: Path, dev: list[Dialogue]) -> dict[str, Path]:
    """train and dev with a topic column, test without: the competition's shapes (test.csv has no topic)."""
    source = DATA / "dev.csv"
    with source.open(encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    paths = {}
    for name, part, columns in (
        ("train", rows[:20], ["fname", "dialogue", "summary", "topic"]),
        ("dev", rows[20:30], ["fname", "dialogue", "summary", "topic"]),
        ("test", rows[30:40], ["fname", "dialogue"]),
    ):
        path = paths[name] = tmp_path / f"{name}.csv"
        with path.open("w", encoding="utf-8", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
            writer.writeheader()
            writer.writerows(part)
    return paths


def test_test_prompts_look_like_dev_prompts_under_the_default_topic_policy(tmp_path, dev):
    """Default (auto): train/dev have topics, test has none -> every prompt uses the default topic, so a test
    prompt and a dev prompt of the same dialogue are identical. With `always`, the mismatch is said.
    Mutation caught: topic_of ignoring the policy (dev prompts name the topic, test prompts the fallback)."""
    from dialsum.prompt import resolve_topic_policy, topic_mismatch

    folder = "llama-3.2-korean-bllossom-3b"
    tokenizer = real_tokenizer(folder)
    paths = _competition_files(tmp_path, dev)
    train, dev_split, test = (load_dialogues(paths[n]) for n in ("train", "dev", "test"))
    raw = {"model": {"name_or_path": str(MODELS / folder)}, "data": {k: str(v) for k, v in paths.items()}}
    config, note = resolve_topic_policy(config_from_dict(raw), train, dev_split)
    assert config.prompt.topic == "never" and "test.csv" in note
    same_dialogue_in_dev = Dialogue(test[0].id, test[0].turns, topic="쇼핑", references=["x"])
    as_test = tokenizer.decode(encode_prompt(tokenizer, test[0], config))
    as_dev = tokenizer.decode(encode_prompt(tokenizer, same_dialogue_in_dev, config))
    assert as_test == as_dev
    assert topic_mismatch(config.prompt, test, "test.csv") is None
    # another dev prompt differs from a test prompt only in the dialogue text
    other = tokenizer.decode(encode_prompt(tokenizer, dev_split[0], config))
    conversation = "\n".join(f"{t.speaker}: {t.utterance}" for t in dev_split[0].turns)
    test_conversation = "\n".join(f"{t.speaker}: {t.utterance}" for t in test[0].turns)
    assert other.replace(conversation, "<D>") == as_test.replace(test_conversation, "<D>")

    always, _ = resolve_topic_policy(config_from_dict(raw, ["prompt.topic=always"]), train, dev_split)
    assert "쇼핑" in tokenizer.decode(encode_prompt(tokenizer, same_dialogue_in_dev, always))
    line = topic_mismatch(always.prompt, test, "test.csv")
    assert line and "10 of 10" in line and "\n" not in line


# ---------------------------------------------------------------- item 5: no_repeat_ngram_size and speaker tags


def impossible_share(tokenizer, references: list[str], size: int, exempt: set[int]) -> float:
    """Share of references that a no-repeat-n-gram ban of `size` could never produce."""
    from dialsum.suppress import NoRepeatNGramExceptTags

    ban = NoRepeatNGramExceptTags(size, sorted(exempt))
    impossible = 0
    for text in references:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        impossible += any(ids[i] in ban.banned(ids[:i]) for i in range(len(ids)))
    return impossible / len(references)


def test_no_repeat_ngram_spares_speaker_tags_on_real_dev_references(dev):
    """koBART preset: no_repeat_ngram_size=2 with '#Person1#' one token forbids '#Person1#은 ... #Person1#은'.
    Measured on the real dev references: the share the ban makes impossible, with and without the tag
    exemption. Mutation caught: an exemption that does not apply (tag_token_ids returning nothing)."""
    from dialsum.suppress import tag_token_ids

    tokenizer = real_tokenizer("kobart")
    add_seq2seq_special_tokens(tokenizer, dev)
    references = [d.references[0] for d in dev]
    plain = impossible_share(tokenizer, references, 2, set())
    exempt = impossible_share(tokenizer, references, 2, set(tag_token_ids(tokenizer)))
    with_tag_pair = [
        r for r in references if any(r.count(f"#Person{i}#은") > 1 or r.count(f"#Person{i}#는") > 1 for i in (1, 2))
    ]
    assert with_tag_pair and impossible_share(
        tokenizer, with_tag_pair, 2, set(tag_token_ids(tokenizer))
    ) < impossible_share(tokenizer, with_tag_pair, 2, set())
    assert exempt < plain
    print(
        f"no_repeat_ngram_size=2 on {len(references)} dev references: {plain:.1%} impossible, "
        f"{exempt:.1%} with speaker/mask tags exempt"
    )


# ---------------------------------------------------------------- item 8: suppression on the real vocabularies


@pytest.mark.parametrize("folder", ["llama-3.2-korean-bllossom-3b", "qwen2.5-1.5b-instruct"])
def test_suppression_table_on_real_vocabulary(folder):
    """The table builds in seconds on the 128k/151k vocabularies; it bans whole-token Han/kana/Cyrillic and
    byte fragments that can only become Han, and keeps Hangul, Latin and the stop tokens."""
    from dialsum.suppress import ForeignScriptSuppressor, suppression_table

    tokenizer = real_tokenizer(folder)
    start = time.perf_counter()
    table = suppression_table(tokenizer)
    assert time.perf_counter() - start < 10
    banned = int(table.static_bad.sum())
    assert 10_000 < banned < len(tokenizer) // 2
    for text in ("會議", "ありがとう", "Привет"):
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert any(table.static_bad[i] for i in ids), text
    for text in ("두 사람이 회의 시간을 정한다.", " Mr. Smith는"):
        assert not any(table.static_bad[i] for i in tokenizer(text, add_special_tokens=False)["input_ids"]), text
    import torch

    from dialsum.scripts import has_foreign_script
    from dialsum.suppress import REPLACEMENT, decode_utf8

    closer = tokenizer.convert_tokens_to_ids(CAUSAL[folder])
    assert not table.static_bad[closer]
    assert table.static_bad[tokenizer.convert_tokens_to_ids("å")]  # lone 0xE5: can only become Han
    processor = ForeignScriptSuppressor(tokenizer, keep_token_ids=[closer], prompt_length=1)
    hangul_lead = tokenizer.convert_tokens_to_ids("ë")  # byte 0xEB: the first byte of many Hangul syllables
    scores = processor(torch.tensor([[0, hangul_lead]]), torch.zeros(1, len(tokenizer)))
    allowed = torch.isfinite(scores[0]).nonzero().flatten().tolist()
    assert len(allowed) > 100  # the continuation-byte tokens that complete a Hangul syllable, and the closer
    for token in allowed:  # whatever is allowed after the lead byte completes no forbidden or broken character
        code_points, _ = decode_utf8(b"\xeb" + table.token_bytes[token])
        assert REPLACEMENT not in code_points and not has_foreign_script("".join(map(chr, code_points))), token


# ---------------------------------------------------------------- item 10: tiny tokenizers stay faithful


@pytest.mark.parametrize(
    "arch, folder",
    [
        ("llama", "llama-3.2-korean-bllossom-3b"),
        ("qwen2", "qwen2.5-1.5b-instruct"),
        ("qwen3", "qwen3-0.6b"),
        ("bart", "kobart"),
    ],
)
def test_tiny_tokenizers_match_their_real_counterparts(arch, folder):
    """Named special tokens, BOS-prepending, the turn closer and the rendered chat structure (with the dialogue
    text replaced) of each tiny tokenizer equal the real one's. Mutation caught: a tiny template or special
    token drifting from the real one (e.g. tiny llama's EOS set to <|end_of_text|>)."""
    from dialsum.models import load_tokenizer
    from dialsum.tiny import tiny_model_cached

    real = real_tokenizer(folder)
    config = config_for(folder)
    tiny = load_tokenizer(tiny_model_cached(arch), config)
    for name in ("bos_token", "eos_token", "pad_token"):
        assert getattr(tiny, name) == getattr(real, name), name
    added = [
        [tok for tok in t.convert_ids_to_tokens(t("안녕")["input_ids"]) if tok in t.all_special_tokens]
        for t in (tiny, real)
    ]
    assert added[0] == added[1]  # what tokenizer(text) adds around a text (Llama: BOS; Qwen, koBART: nothing)
    assert bool(tiny.chat_template) == bool(real.chat_template)
    if not real.chat_template:
        return
    assert end_of_turn_token(tiny) == end_of_turn_token(real)
    messages = [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}]
    for extra in ({"add_generation_prompt": True}, {}):
        chat = messages if extra else [*messages, {"role": "assistant", "content": "A"}]
        rendered = [
            t.apply_chat_template(chat, tokenize=False, date_string="26 Jul 2024", **extra) for t in (tiny, real)
        ]
        assert rendered[0] == rendered[1]
    no_system = [{"role": "user", "content": "U"}]
    tiny_text, real_text = (
        t.apply_chat_template(no_system, tokenize=False, add_generation_prompt=True, date_string="x")
        for t in (tiny, real)
    )
    if arch == "llama":  # Bllossom injects its own Korean/English system prompt; tiny llama (Meta's) leaves it empty
        assert (
            "당신은 유능한 AI 어시스턴트" in real_text
            and real_text.replace(real_text[real_text.index("You are") : real_text.index("<|eot_id|>")], "")
            == tiny_text
        )
    else:
        assert tiny_text == real_text


def test_real_generation_configs_are_what_the_tests_assume():
    """The keys the generation tests copy from the real checkpoints (test_generate) are really there."""
    bllossom = json.loads((real_dir("llama-3.2-korean-bllossom-3b") / "generation_config.json").read_text())
    assert bllossom["do_sample"] is True and bllossom["temperature"] == 0.6 and bllossom["eos_token_id"] == 128001
    kobart = json.loads((real_dir("kobart") / "generation_config.json").read_text())
    assert kobart["forced_eos_token_id"] == 1


# ---------------------------------------------------------------- item 9: dialsum inspect


def test_inspect_with_a_real_tokenizer_shows_right_ids_raw_lengths_and_packing_waste(tmp_path):
    """`inspect --model <real tokenizer>`: the id printed for each example is its own (an unlabeled first row
    shifted them), length percentiles are taken before trimming, and the packing waste is computed, not 0.
    Mutations caught: dialogues[index].id; percentiles of trimmed lengths; a constant 0 for packing."""
    from dialsum.inspection import inspect_data

    source = shared_dev_rows()
    rows = [dict(source[0], summary="")] + source[1:40]
    rows[5] = dict(rows[5], dialogue="\n".join([rows[5]["dialogue"]] * 12))  # ~5k tokens: trimmed
    path = tmp_path / "train.csv"
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    folder = "llama-3.2-korean-bllossom-3b"
    config = config_from_dict({"model": {"name_or_path": "unused"}, "training": {"max_length": 1024}})
    result = inspect_data(config, str(path), n=3, model=str(real_dir(folder)))
    assert result["example_ids"] == [rows[1]["fname"], rows[2]["fname"], rows[3]["fname"]]
    assert result["unlabeled"] == 1 and result["trimmed"] == 1
    assert result["lengths_before_trimming"]["max"] > 2000 >= result["lengths"]["max"]
    assert 0 < result["padding_waste_packed"] < result["padding_waste_padded"]


def shared_dev_rows() -> list[dict[str, str]]:
    path = DATA / "dev.csv"
    if not path.is_file():
        pytest.skip("../shared/data/dialogsum-ko/dev.csv not present")
    with path.open(encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


# ---------------------------------------------------------------- item 10: end to end with the real 128k vocabulary


@pytest.mark.slow
def test_train_and_predict_through_a_tiny_model_with_the_real_bllossom_vocabulary(tmp_path):
    """make-tiny-model --tokenizer <Bllossom>: a random 64-wide Llama around the real 128,256-token tokenizer
    and chat template trains (a few steps) and predicts, every test id in order, no foreign script, generation
    settings from the config (the checkpoint's do_sample/temperature ignored and said)."""
    from typer.testing import CliRunner

    from dialsum.cli import app
    from dialsum.predict import predict
    from dialsum.scripts import has_foreign_script
    from dialsum.train import train

    folder = real_dir("llama-3.2-korean-bllossom-3b")
    rows = shared_dev_rows()
    model_dir = tmp_path / "tiny-bllossom"
    result = CliRunner().invoke(app, ["make-tiny-model", "--tokenizer", str(folder), "--output", str(model_dir)])
    assert result.exit_code == 0, result.output
    train_csv = tmp_path / "train.csv"
    with train_csv.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows[:16])
    config = config_from_dict(
        {
            "model": {"name_or_path": str(model_dir)},
            "data": {"train": str(train_csv)},
            "training": {
                "max_steps": 2,
                "per_device_train_batch_size": 4,
                "gradient_accumulation_steps": 1,
                "max_length": 512,
                "gradient_checkpointing": False,
                "learning_rate": 1e-3,
            },
            "generation": {"max_new_tokens": 6, "batch_size": 8, "no_repeat_ngram_size": 1},
        }
    )
    run_dir = train(config, output_dir=tmp_path / "run")
    data = tmp_path / "test.csv"  # the first 24 rows of the competition's test file (no summary, no topic)
    with (DATA / "test.csv").open(encoding="utf-8", newline="") as handle:
        test_rows = list(csv.DictReader(handle))[:24]
    with data.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(test_rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(test_rows)
    out = tmp_path / "pred.csv"
    stats = predict(run_dir, data, out, progress=False)
    with out.open(encoding="utf-8", newline="") as handle:
        predicted = list(csv.DictReader(handle))
    expected = [d.id for d in load_dialogues(data)]
    assert [r["fname"] for r in predicted] == expected
    assert stats["foreign"] == 0 and not any(has_foreign_script(r["summary"]) for r in predicted)
    assert stats["generation"]["ignored_from_checkpoint"]["do_sample"] is True
