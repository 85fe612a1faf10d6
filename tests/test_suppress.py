"""suppress.py: foreign-script suppression that cannot leak (byte fragments included), the tag-sparing n-gram ban."""

from __future__ import annotations

import random

import pytest
import torch

from dialsum.config import config_from_dict
from dialsum.data import Dialogue, Turn
from dialsum.generate import generate_summaries
from dialsum.scripts import foreign_script_chars, has_foreign_script
from dialsum.suppress import ForeignScriptSuppressor, banned_bytes, decode_utf8, suppression_table


def make_config(model_path, **generation):
    return config_from_dict({"model": {"name_or_path": str(model_path)}, "generation": generation})


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
    assert any(
        table.static_bad[i]
        for i, data in enumerate(table.token_bytes)
        if has_foreign_script(data.decode("utf-8", "replace"))
    )
    # the vectorised per-prefix masks equal the rule applied token by token
    for pending in [bytes([lead]) for lead in range(0xC2, 0xF5)] + [
        b"\xe4\xb8",
        b"\xea\xb0",
        b"\xf0\xa0",
        b"\xf0\x9f\x98",
    ]:
        mask = table.state_mask(pending)
        expected = [bool(data) and banned_bytes(data, pending) for data in table.token_bytes]
        assert mask.tolist() == expected, pending


def _gpt2_byte_chars():
    from dialsum.suppress import _bytes_to_unicode

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
        return generate_summaries(model, tokenizer, records, config, progress=False)

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
    for processor, expect_leaks in (
        (StaticOnly(tokenizer), True),
        (ForeignScriptSuppressor(tokenizer, prompt_length=ids.shape[1]), False),
    ):
        out = model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            do_sample=True,
            top_k=0,
            max_new_tokens=40,
            min_new_tokens=40,
            logits_processor=[processor],
            pad_token_id=tokenizer.eos_token_id,
        )
        texts = [tokenizer.decode(row[ids.shape[1] :], skip_special_tokens=True) for row in out]
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


# ---------------------------------------------------------------- the n-gram ban that spares tags


def test_no_repeat_processor_equals_transformers_without_exemptions_and_spares_tags():
    """dialsum's n-gram ban replaces transformers' (to exempt speaker tags): with no exempt ids it bans exactly
    what NoRepeatNGramLogitsProcessor bans; an n-gram holding an exempt id is never banned.
    Mutations caught: an off-by-one in the prefix window; exempt ids ignored."""
    from transformers import NoRepeatNGramLogitsProcessor

    from dialsum.suppress import NoRepeatNGramExceptTags

    rng = random.Random(0)
    for size in (1, 2, 3):
        ours, theirs = NoRepeatNGramExceptTags(size, []), NoRepeatNGramLogitsProcessor(size)
        for _ in range(300):
            ids = torch.tensor([[rng.randrange(6) for _ in range(rng.randint(0, 12))] or [0]])
            expected = torch.isinf(theirs(ids, torch.zeros(1, 6))).nonzero()[:, 1].tolist()
            assert sorted(torch.isinf(ours(ids, torch.zeros(1, 6))).nonzero()[:, 1].tolist()) == sorted(expected)
    tag, a, b = 5, 1, 2
    spared = NoRepeatNGramExceptTags(2, [tag])
    assert spared.banned([tag, a, b, tag]) == set()  # "#Person1#은 ... #Person1#은" stays possible
    assert spared.banned([a, b, a]) == {b}  # an ordinary repeat is still banned
