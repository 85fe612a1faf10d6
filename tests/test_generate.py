"""Generation: foreign-script suppression that cannot leak, batching that changes nothing, predict in input order."""

from __future__ import annotations

import csv
import random
import shutil
from pathlib import Path

import pytest
import torch

from conftest import shared_file
from dialsum.config import config_from_dict, save_config
from dialsum.data import Dialogue, Turn, load_dialogues
from dialsum.errors import ConfigError, DialsumError
from dialsum.generate import (
    ForeignScriptSuppressor, banned_bytes, clean_summary, decode_utf8, generate_summaries, lead_baseline,
    load_for_inference, predict, suppression_table,
)
from dialsum.scripts import foreign_script_chars, has_foreign_script

ROOT = Path(__file__).resolve().parents[1]
SAMPLE_TEST = ROOT / "src" / "dialsum" / "sample_data" / "test.csv"
SHARED_TEST = ROOT.parent / "shared" / "data" / "dialogsum-ko" / "test.csv"


def make_config(model_path, **generation):
    kind = "seq2seq" if "bart" in str(model_path) else "causal"
    return config_from_dict({"model": {"name_or_path": str(model_path), "kind": kind}, "generation": generation})


def read_rows(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def llama(tiny_llama):
    model, tokenizer, _ = load_for_inference(tiny_llama, make_config(tiny_llama))
    return model, tokenizer


@pytest.fixture(scope="module")
def llama_tokenizer(tiny_llama):
    """The tiny Llama's tokenizer alone, for the tests that need no model (they stay out of `slow`)."""
    from dialsum.models import load_tokenizer

    return load_tokenizer(tiny_llama, make_config(tiny_llama))


@pytest.fixture(scope="module")
def sample_dialogues():
    return load_dialogues(SAMPLE_TEST)


# ---------------------------------------------------------------- the byte logic


def test_utf8_simulation_matches_python_decoder():
    rng = random.Random(0)
    interesting = [0x41, 0x80, 0x9F, 0xA0, 0xBF, 0xC0, 0xC2, 0xD0, 0xE0, 0xE4, 0xEA, 0xED, 0xF0, 0xF4, 0xF5, 0xFF]
    for _ in range(20000):
        data = bytes(rng.choice(interesting + [rng.randrange(256)]) for _ in range(rng.randint(0, 8)))
        code_points, pending = decode_utf8(data)
        text = "".join(map(chr, code_points)) + ("\ufffd" if pending else "")
        assert text == data.decode("utf-8", "replace"), data
        cut = rng.randint(0, len(data))  # decoding in two pieces (token by token) changes nothing
        first, left = decode_utf8(data[:cut])
        second, rest = decode_utf8(data[cut:], left)
        assert (first + second, rest) == (code_points, pending)


def test_byte_rules():
    hangul, han = "가".encode(), "中".encode()  # EA B0 80, E4 B8 AD
    assert not banned_bytes(hangul[:1])  # a Hangul lead byte alone: Korean is built from such fragments
    assert not banned_bytes(hangul[:2])
    assert not banned_bytes(hangul[1:], pending=hangul[:1])  # completing the syllable
    assert not banned_bytes("한국어 Mr. Smith $5, 10% #Person1#".encode())
    assert banned_bytes(han)
    assert banned_bytes(b"\xe5")  # U+5000-U+5FFF: all Han, so the lead byte alone is banned
    assert banned_bytes(han[:2])  # U+4E00-U+4E3F: all Han
    assert not banned_bytes(han[:1])  # U+4000-U+4FFF is not all Han (U+4DC0 hexagrams) ...
    assert banned_bytes(han[1:2], pending=han[:1])  # ... so the next step bans the continuation
    assert banned_bytes(han[1:], pending=han[:1])
    assert banned_bytes("привет".encode()[:1])  # 0xD0: all Cyrillic
    assert banned_bytes("あ".encode()) and banned_bytes("カ".encode()) and banned_bytes("ไ".encode())
    assert not banned_bytes("é".encode()[:1])  # Latin-1 supplement lead byte
    assert banned_bytes(b"\x80")  # a stray continuation byte would print U+FFFD in the summary
    assert banned_bytes(b"A", pending=hangul[:1])  # so would breaking off a started syllable
    assert not banned_bytes(han, scripts=["Cyrillic"])


def test_vocabulary_masks_agree_with_the_byte_rule(llama_tokenizer):
    tokenizer = llama_tokenizer
    table = suppression_table(tokenizer)
    byte_token = {byte: tokenizer.convert_tokens_to_ids(char) for byte, char in _gpt2_byte_chars().items()}
    assert table.static_bad[byte_token[0xE5]] and table.static_bad[byte_token[0xD0]]
    for allowed in (0xEA, 0xEB, 0xEC, 0xED, ord("A"), ord("7"), ord("$"), ord(".")):
        assert not table.static_bad[byte_token[allowed]]
    assert any(table.static_bad[i] for i, data in enumerate(table.token_bytes) if has_foreign_script(data.decode("utf-8", "replace")))
    # the vectorised per-prefix masks equal the rule applied token by token
    for pending in [bytes([lead]) for lead in range(0xC2, 0xF5)] + [b"\xe4\xb8", b"\xea\xb0", b"\xf0\xa0", b"\xf0\x9f\x98"]:
        mask = table.state_mask(pending)
        expected = [bool(data) and banned_bytes(data, pending) for data in table.token_bytes]
        assert mask.tolist() == expected, pending


def _gpt2_byte_chars():
    from dialsum.generate import _bytes_to_unicode

    return _bytes_to_unicode()


# ---------------------------------------------------------------- adversarial sampling


def _attack_ids(tokenizer) -> list[int]:
    """Tokens that are, or can build, forbidden characters: whole foreign tokens, lone lead bytes of
    Han / kana / Cyrillic / Thai, and continuation-byte fragments."""
    table = suppression_table(tokenizer)
    ids = []
    for i, data in enumerate(table.token_bytes):
        if not data:
            continue
        if table.static_bad[i] or data[0] in (0xE0, 0xE3, 0xE4, 0xE5, 0xE6, 0xD0, 0xD1) or 0x80 <= data[0] <= 0xBF:
            ids.append(i)
    return ids


@pytest.fixture
def attacked_llama(llama):
    """The tiny model with a hook that adds +6 to the logits of every attack token."""
    model, tokenizer = llama
    bonus = torch.zeros(model.get_output_embeddings().weight.shape[0])
    bonus[_attack_ids(tokenizer)] = 6.0
    handle = model.get_output_embeddings().register_forward_hook(lambda module, args, out: out + bonus.to(out.dtype))
    yield model, tokenizer
    handle.remove()


@pytest.mark.slow
def test_suppression_never_emits_a_forbidden_character(attacked_llama):
    model, tokenizer = attacked_llama
    record = Dialogue("d", [Turn("#Person1#", "안녕하세요."), Turn("#Person2#", "네, 반갑습니다.")], topic="인사")
    records = [record] * 64
    config = make_config("x", do_sample=True, temperature=1.5, max_new_tokens=40, batch_size=64)

    def sample(seed: int) -> list[str]:
        torch.manual_seed(seed)
        return generate_summaries(model, tokenizer, records, config, kind="causal", progress=False)

    config.generation.suppress_foreign_scripts = False
    unsuppressed = sample(0)
    leaked = [s for s in unsuppressed if has_foreign_script(s)]
    assert len(leaked) > 32  # the attack works: without suppression most outputs carry foreign script

    config.generation.suppress_foreign_scripts = True
    for seed in (1, 2, 3):
        outputs = sample(seed)
        assert len(outputs) == 64 and sum(len(s) for s in outputs) > 64 * 10  # it did generate text
        assert [foreign_script_chars(s) for s in outputs if has_foreign_script(s)] == []


@pytest.mark.slow
def test_static_mask_alone_leaks_through_byte_fragments(attacked_llama):
    """Why the per-step byte check exists: banning whole foreign tokens is not enough."""
    model, tokenizer = attacked_llama
    ids = torch.tensor([tokenizer("안녕하세요")["input_ids"]] * 64)

    naive_ban = torch.tensor([has_foreign_script(tokenizer.decode([i])) for i in range(len(tokenizer))])

    class StaticOnly(ForeignScriptSuppressor):  # the usual approach: ban tokens that decode to a foreign char
        def __call__(self, input_ids, scores):
            return scores.masked_fill(naive_ban[: scores.shape[-1]].to(scores.device), float("-inf"))

    torch.manual_seed(0)
    for processor, expect_leaks in ((StaticOnly(tokenizer), True), (ForeignScriptSuppressor(tokenizer, prompt_length=ids.shape[1]), False)):
        out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=True, top_k=0, max_new_tokens=40,
                             min_new_tokens=40, logits_processor=[processor], pad_token_id=tokenizer.eos_token_id)
        texts = [tokenizer.decode(row[ids.shape[1]:], skip_special_tokens=True) for row in out]
        assert any(has_foreign_script(t) for t in texts) == expect_leaks


def test_special_stop_tokens_are_never_banned(llama_tokenizer):
    tokenizer = llama_tokenizer
    processor = ForeignScriptSuppressor(tokenizer, prompt_length=1, keep_token_ids=[3])
    han_lead = tokenizer.convert_tokens_to_ids(_gpt2_byte_chars()[0xE4])
    input_ids = torch.tensor([[0, han_lead]])
    scores = processor(input_ids, torch.zeros(1, len(tokenizer)))
    allowed = torch.isfinite(scores[0])
    assert allowed[tokenizer.eos_token_id] and allowed[3]
    assert not allowed[tokenizer.convert_tokens_to_ids(_gpt2_byte_chars()[0xB8])]  # E4 B8 .. is Han


# ---------------------------------------------------------------- batching


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["llama", "qwen3", "bart"])
def test_batched_equals_one_by_one_in_input_order(arch, sample_dialogues):
    from dialsum.tiny import tiny_model_cached

    path = tiny_model_cached(arch)
    # a random model repeats one token forever under plain greedy; forbid repeats to get varied text
    config = make_config(path, max_new_tokens=12, no_repeat_ngram_size=1, batch_size=4)
    model, tokenizer, config = load_for_inference(path, config)
    records = sample_dialogues[:7]
    hooks = _copy_encoder_words(model, tokenizer) if arch == "bart" else []
    try:
        batched = generate_summaries(model, tokenizer, records, config, progress=False)
        config.generation.batch_size = 1
        single = [generate_summaries(model, tokenizer, [r], config, progress=False)[0] for r in records]
    finally:
        for hook in hooks:
            hook.remove()
    assert batched == single and all(batched)
    assert len(set(batched)) == len(records)  # distinct per dialogue, so order is really checked


def _copy_encoder_words(model, tokenizer) -> list:
    """Random BART barely attends to its encoder (the same text for every input). These hooks make each row's
    decoder favour the non-special tokens of its own encoder input, so each dialogue gets its own summary and a
    row that lands at the wrong position shows."""
    special = torch.tensor(sorted(set(tokenizer.all_special_ids)))
    state = {}

    def on_encoder(module, args, kwargs, output):
        ids = kwargs.get("input_ids", args[0] if args else None)
        bonus = torch.zeros(ids.shape[0], model.get_output_embeddings().out_features)
        bonus.scatter_(1, ids, 20.0)
        bonus[:, special] = 0.0
        state["bonus"] = bonus

    def on_lm_head(module, args, output):
        return output + state["bonus"][:, None, :].to(output.dtype)

    return [model.get_encoder().register_forward_hook(on_encoder, with_kwargs=True),
            model.get_output_embeddings().register_forward_hook(on_lm_head)]


# ---------------------------------------------------------------- predict


def _run_dir(tmp_path: Path, model_path: Path, **generation) -> Path:
    run = tmp_path / "run"
    shutil.copytree(model_path, run / "model")
    save_config(make_config(model_path, **generation), run / "config.yaml")
    return run


@pytest.mark.slow
def test_predict_on_sample_keeps_ids_in_order(tiny_llama, tmp_path):
    run = _run_dir(tmp_path, tiny_llama, max_new_tokens=8, no_repeat_ngram_size=1)
    out = tmp_path / "pred.csv"
    stats = predict(run, SAMPLE_TEST, out, progress=False)
    rows = read_rows(out)
    assert [r["fname"] for r in rows] == [d.id for d in load_dialogues(SAMPLE_TEST)]
    assert list(rows[0]) == ["fname", "summary"]
    assert stats["n"] == len(rows) and stats["foreign"] == 0 and stats["empty"] == sum(not r["summary"] for r in rows)


@pytest.mark.slow
def test_empty_generations_stay_rows_and_are_counted(tiny_llama, tmp_path):
    run = _run_dir(tmp_path, tiny_llama, max_new_tokens=1)
    # the model's own generation config forces EOS as the last (here: the only) new token
    (run / "model" / "generation_config.json").write_text('{"eos_token_id": [4, 1], "forced_eos_token_id": 4}')
    out = tmp_path / "pred.csv"
    stats = predict(run / "model", SAMPLE_TEST, out, progress=False)  # a run's model/ dir works too
    rows = read_rows(out)
    assert len(rows) == stats["n"] == stats["empty"] == 10
    assert all(r["summary"] == "" for r in rows)


@pytest.mark.slow
def test_predict_on_real_test_file(tiny_llama, tmp_path):
    shared_file("data/dialogsum-ko/test.csv")  # absent: a failure under CI, a skip elsewhere
    out = tmp_path / "pred.csv"
    stats = predict(tiny_llama, SHARED_TEST, out, config=make_config(tiny_llama), progress=False,
                    overrides=["generation.max_new_tokens=4", "generation.batch_size=32"])
    ids = [r["fname"] for r in read_rows(out)]
    assert ids == [d.id for d in load_dialogues(SHARED_TEST)] and len(ids) == stats["n"] == 499


@pytest.mark.slow
def test_lora_adapter_run_is_merged_for_inference(tiny_llama, tmp_path, sample_dialogues):
    from peft import LoraConfig, get_peft_model

    from dialsum.models import load_model, load_tokenizer

    config = make_config(tiny_llama, max_new_tokens=8, no_repeat_ngram_size=1)
    tokenizer = load_tokenizer(tiny_llama, config)
    tokenizer.add_special_tokens({"pad_token": "<|pad|>"})  # as training does when the model has no pad
    base = load_model(tiny_llama, config)
    base.resize_token_embeddings(len(tokenizer))
    torch.manual_seed(0)
    peft_model = get_peft_model(base, LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False))
    run = tmp_path / "run"
    peft_model.save_pretrained(run / "model")
    tokenizer.save_pretrained(run / "model")
    save_config(config, run / "config.yaml")

    model, loaded_tokenizer, loaded_config = load_for_inference(run)
    assert not hasattr(model, "peft_config") and loaded_tokenizer.padding_side == "left"
    assert model.get_input_embeddings().num_embeddings == len(tokenizer)
    ids = torch.tensor([tokenizer("안녕하세요 반갑습니다")["input_ids"]])
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, peft_model.eval()(ids).logits, atol=1e-4, rtol=1e-4)
    assert generate_summaries(model, loaded_tokenizer, sample_dialogues[:2], loaded_config, progress=False)[0]


def test_plain_path_needs_a_config_and_vllm_errors_are_clear(tiny_llama, tiny_bart, tmp_path, monkeypatch):
    import sys

    with pytest.raises(ConfigError, match="pass a config"):
        predict(tiny_llama, SAMPLE_TEST, tmp_path / "p.csv")
    with pytest.raises(DialsumError, match="decoder-only"):
        predict(tiny_bart, SAMPLE_TEST, tmp_path / "p.csv", config=make_config(tiny_bart, backend="vllm"))
    monkeypatch.setitem(sys.modules, "vllm", None)  # absent, also where vLLM is installed: the import fails
    with pytest.raises(DialsumError, match=r"pip install 'dialsum\[vllm\]'"):
        predict(tiny_llama, SAMPLE_TEST, tmp_path / "p.csv", config=make_config(tiny_llama, backend="vllm"))
    assert not (tmp_path / "p.csv").exists()


@pytest.mark.slow
def test_vllm_backend_predicts_in_input_order(tiny_llama, tmp_path):
    """Where vLLM and a GPU are present, the vLLM backend writes one row per dialogue, in input order."""
    pytest.importorskip("vllm", reason="vLLM is not installed (pip install 'dialsum[vllm]')")
    if not torch.cuda.is_available():
        pytest.skip("vLLM is installed but there is no CUDA GPU")
    out = tmp_path / "pred.csv"
    stats = predict(tiny_llama, SAMPLE_TEST, out, config=make_config(tiny_llama, backend="vllm", max_new_tokens=8),
                    progress=False)
    assert [r["fname"] for r in read_rows(out)] == [d.id for d in load_dialogues(SAMPLE_TEST)]
    assert stats["n"] == len(read_rows(out)) and stats["foreign"] == 0


# ---------------------------------------------------------------- post-processing


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("assistant\n\n#Person1#은 회의 시간을 정한다.", "#Person1#은 회의 시간을 정한다."),
        ("<|start_header_id|>assistant<|end_header_id|>\n\n요약: 두 사람이  만난다.<|eot_id|>", "두 사람이 만난다."),
        ("<|im_start|>assistant\n[요약] Mr. Smith가 $5를 낸다.", "Mr. Smith가 $5를 낸다."),
        ("<think>\n\n</think>\n\nSummary: 둘이\n\n 약속한다.", "둘이 약속한다."),
        ("**요약**: 회의가 연기된다.", "회의가 연기된다."),
        ("   ", ""),
        ("", ""),
        ("요약하면 둘은 친구다.", "요약하면 둘은 친구다."),  # a sentence starting with 요약 is content, not a label
    ],
)
def test_clean_summary(raw, expected, llama_tokenizer):
    assert clean_summary(raw, llama_tokenizer) == expected


def test_lead_baseline_drops_only_the_leading_tag():
    record = Dialogue("d", [Turn("#Person1#", "#Person2#, 내일 #Address#에서 봐요."), Turn("#Person2#", "네.")])
    assert lead_baseline(record) == "#Person2#, 내일 #Address#에서 봐요."
