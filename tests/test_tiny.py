"""Tiny offline models: they load with the Auto classes offline, run, round-trip Korean, and carry
the real families' template and token quirks (which the encoding and generation code must survive)."""

from __future__ import annotations

import threading
from datetime import datetime

import pytest
import torch

from dialsum.tiny import ARCHES, make_tiny_model, tiny_model_cached

CAUSAL = ["llama", "qwen2", "qwen3"]
KOREAN = [
    "#Person1#: 안녕하세요, 내일 오후 3시에 회의실에서 만나요.\n#Person2#: 네, 알겠습니다!",
    "#Person2#는 #PhoneNumber#로 연락하라고 한다.  공백  두 칸, 탭\t그리고 끝 공백 ",
    "Mr. Smith는 12,345원을 냈다 (약 10% 할인). 😀 ㅋㅋㅋ",
    "韓國語 漢字, ありがとう, Привет: 외국 문자도 그대로 돌아온다.",
]
MESSAGES = [{"role": "system", "content": "요약 도우미입니다."}, {"role": "user", "content": "대화를 요약해주세요."}]


@pytest.fixture(scope="module", params=ARCHES)
def tiny(request):
    from transformers import AutoTokenizer

    path = tiny_model_cached(request.param)
    return request.param, path, AutoTokenizer.from_pretrained(path)


def load_model(arch, path):
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    return (AutoModelForSeq2SeqLM if arch == "bart" else AutoModelForCausalLM).from_pretrained(path)


def render(tokenizer, messages, **kwargs):
    return tokenizer.apply_chat_template(messages, tokenize=False, **kwargs)


def full_and_prompt(tokenizer, summary="두 사람이 회의 시간을 정한다.", **kwargs):
    prompt = render(tokenizer, MESSAGES, add_generation_prompt=True, **kwargs)
    full = render(tokenizer, [*MESSAGES, {"role": "assistant", "content": summary}], **kwargs)
    return prompt, full


# ---------------------------------------------------------------- loading and running


@pytest.mark.slow
def test_loads_offline_and_runs_a_forward_pass(tiny, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    arch, path, tokenizer = tiny
    assert (path / "model.safetensors").is_file() and not list(path.glob("*.bin"))
    model = load_model(arch, path).eval()
    ids = torch.tensor([tokenizer(KOREAN[0])["input_ids"]])
    with torch.no_grad():
        if arch == "bart":
            out = model(input_ids=ids, decoder_input_ids=torch.tensor([[model.config.decoder_start_token_id]]))
        else:
            out = model(input_ids=ids)
    assert out.logits.shape[-1] == model.config.vocab_size and torch.isfinite(out.logits).all()
    if arch.startswith("qwen"):  # padded past the tokenizer, as the real Qwen embedding matrices are
        assert model.config.vocab_size > len(tokenizer) and model.config.vocab_size % 128 == 0
    else:
        assert model.config.vocab_size == len(tokenizer)


def test_korean_round_trips(tiny):
    _, _, tokenizer = tiny
    for text in KOREAN:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert tokenizer.decode(ids) == text
        assert tokenizer.decode(tokenizer(text)["input_ids"], skip_special_tokens=True) == text
        assert tokenizer.unk_token_id is None or tokenizer.unk_token_id not in ids


@pytest.mark.slow  # loads each model for its generation config
def test_special_tokens_and_ids(tiny):
    arch, path, tokenizer = tiny
    model = load_model(arch, path)
    eos_ids = model.generation_config.eos_token_id
    ids = tokenizer.convert_tokens_to_ids
    if arch == "llama":
        assert (tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token) == (
            "<|begin_of_text|>",
            "<|eot_id|>",
            None,
        )
        assert eos_ids == ids(["<|end_of_text|>", "<|eom_id|>", "<|eot_id|>"])
        assert "<|finetune_right_pad_id|>" in tokenizer.get_vocab()  # what training can use as pad
        assert tokenizer(KOREAN[0])["input_ids"][0] == tokenizer.bos_token_id  # the tokenizer adds BOS itself
    elif arch.startswith("qwen"):
        assert (tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token) == (None, "<|im_end|>", "<|endoftext|>")
        assert eos_ids == ids(["<|im_end|>", "<|endoftext|>"])
        assert tokenizer(KOREAN[0])["input_ids"] == tokenizer(KOREAN[0], add_special_tokens=False)["input_ids"]
    else:  # koBART: <s>=0, </s>=1, <pad>=3, and nothing is added around an encoding
        assert (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id) == (0, 1, 3)
        assert tokenizer.mask_token == "<mask>" and tokenizer.unk_token == "<unk>"
        assert tokenizer(KOREAN[0])["input_ids"] == tokenizer(KOREAN[0], add_special_tokens=False)["input_ids"]
        assert model.config.decoder_start_token_id == tokenizer.eos_token_id == eos_ids
    if arch != "bart":  # the released instruct models sample by default
        assert model.generation_config.do_sample is True
        assert tokenizer.eos_token_id in eos_ids
    assert len(set(tokenizer.get_vocab().values())) == len(tokenizer)


def test_vocabulary_has_whole_foreign_tokens_and_byte_fragments(tiny):
    """Suppression needs both: tokens that are whole Han/kana/Cyrillic characters, and lone bytes."""
    _, _, tokenizer = tiny
    decoded = [tokenizer.decode([i]) for i in range(len(tokenizer))]
    for lo, hi in [(0x4E00, 0x9FFF), (0x3040, 0x309F), (0x0400, 0x04FF)]:  # Han, Hiragana, Cyrillic
        assert any(text and all(lo <= ord(c) <= hi for c in text.strip()) and text.strip() for text in decoded)
    fragments = [text for text in decoded if text == "\ufffd"]  # a lone UTF-8 lead or continuation byte
    assert len(fragments) >= 64


# ---------------------------------------------------------------- chat templates


def test_bart_has_no_chat_template(tiny):
    arch, _, tokenizer = tiny
    assert (tokenizer.chat_template is None) == (arch == "bart")


@pytest.mark.parametrize("arch", CAUSAL)
def test_prompt_tokens_are_a_prefix_of_the_full_rendering(arch):
    """The split pattern keeps the prompt's trailing "\\n\\n" apart from the answer, as on the real models."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_cached(arch))
    kwargs = {"enable_thinking": False} if arch == "qwen3" else {}
    prompt, full = full_and_prompt(tokenizer, **kwargs)
    assert full.startswith(prompt)
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    assert tokenizer(full, add_special_tokens=False)["input_ids"][: len(prompt_ids)] == prompt_ids
    # apply_chat_template(tokenize=True) returns a BatchEncoding in transformers 5 and adds no second BOS
    assert tokenizer.apply_chat_template(MESSAGES, add_generation_prompt=True, **kwargs)["input_ids"] == prompt_ids


def test_llama_template_headers_and_date_line():
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_cached("llama"))
    before = datetime.now().strftime("%d %b %Y")
    prompt, full = full_and_prompt(tokenizer, summary="  요약입니다.  ")
    after = datetime.now().strftime("%d %b %Y")
    today = before if f"Today Date: {before}\n" in prompt else after  # rendered across midnight: either day
    assert prompt.startswith(
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
        f"Cutting Knowledge Date: December 2023\nToday Date: {today}\n\n요약 도우미입니다.<|eot_id|>"
    )
    assert prompt.endswith(
        "<|start_header_id|>user<|end_header_id|>\n\n대화를 요약해주세요.<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )
    assert full == prompt + "요약입니다.<|eot_id|>"  # content is trimmed; no header after the answer
    pinned = render(tokenizer, MESSAGES, add_generation_prompt=True, date_string="26 Jul 2024")
    assert "Today Date: 26 Jul 2024\n" in pinned
    no_system = render(tokenizer, MESSAGES[1:], add_generation_prompt=True, date_string="26 Jul 2024")
    assert "Today Date: 26 Jul 2024\n\n<|eot_id|><|start_header_id|>user" in no_system  # the block is always there
    ids = tokenizer(prompt)["input_ids"]  # the classic double-BOS trap: template BOS + tokenizer BOS
    assert ids[:2] == [tokenizer.bos_token_id] * 2


def test_qwen2_injects_its_default_system_prompt():
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_cached("qwen2"))
    default = "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
    no_system = render(tokenizer, MESSAGES[1:], add_generation_prompt=True)
    assert no_system == default + "<|im_start|>user\n대화를 요약해주세요.<|im_end|>\n<|im_start|>assistant\n"
    prompt, full = full_and_prompt(tokenizer, summary="요약 ")
    assert prompt.startswith("<|im_start|>system\n요약 도우미입니다.<|im_end|>\n") and "You are Qwen" not in prompt
    assert full == prompt + "요약 <|im_end|>\n"  # not trimmed, and a newline after <|im_end|>


def test_qwen3_think_block():
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_cached("qwen3"))
    assert "You are Qwen" not in render(tokenizer, MESSAGES[1:], add_generation_prompt=True)
    prompt, full = full_and_prompt(tokenizer, summary="요약")
    assert prompt.endswith("<|im_start|>assistant\n")  # the plain generation prompt has no think block ...
    assert full == prompt + "<think>\n\n</think>\n\n요약<|im_end|>\n"  # ... but the rendered answer does
    no_think, _ = full_and_prompt(tokenizer, enable_thinking=False)
    assert no_think == prompt + "<think>\n\n</think>\n\n"
    # only the answer after the last user turn gets one; reasoning written inline is moved into it
    turns = [
        *MESSAGES,
        {"role": "assistant", "content": "첫 답"},
        {"role": "user", "content": "다시"},
        {"role": "assistant", "content": "<think>생각</think>\n\n둘째 답"},
    ]
    text = render(tokenizer, turns)
    assert "<|im_start|>assistant\n첫 답<|im_end|>" in text
    assert text.endswith("<|im_start|>assistant\n<think>\n생각\n</think>\n\n둘째 답<|im_end|>\n")
    # <think> is one added token that is not special: skip_special_tokens keeps it
    think = tokenizer.convert_tokens_to_ids("<think>")
    assert tokenizer("<think>\n\n</think>", add_special_tokens=False)["input_ids"][0] == think
    assert tokenizer.decode([think, tokenizer.eos_token_id], skip_special_tokens=True) == "<think>"


# ---------------------------------------------------------------- building and caching


def test_build_is_seeded_and_takes_a_corpus(tmp_path):
    from safetensors.torch import load_file

    corpus = ["#Person1#: 안녕하세요.\n#Person2#: 반갑습니다."] * 20
    a = make_tiny_model("bart", tmp_path / "a", corpus=corpus, vocab_size=600, seed=1)
    b = make_tiny_model("bart", tmp_path / "b", corpus=corpus, vocab_size=600, seed=1)
    c = make_tiny_model("bart", tmp_path / "c", corpus=corpus, vocab_size=600, seed=2)
    wa, wb, wc = (load_file(path / "model.safetensors") for path in (a, b, c))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert not all(torch.equal(wa[k], wc[k]) for k in wa)
    assert (a / "tokenizer.json").read_text() == (b / "tokenizer.json").read_text()
    with pytest.raises(ValueError, match="arch must be one of"):
        make_tiny_model("gpt2", tmp_path / "d")  # type: ignore[arg-type]


def test_without_sample_data_the_fallback_corpus_is_used(tmp_path, monkeypatch):
    from transformers import AutoTokenizer

    import dialsum.data
    from dialsum.tiny import FALLBACK_CORPUS, sample_corpus

    monkeypatch.setattr(dialsum.data, "SAMPLE_DIR", tmp_path / "missing")
    assert sample_corpus() == FALLBACK_CORPUS
    tokenizer = AutoTokenizer.from_pretrained(make_tiny_model("qwen3", tmp_path / "model", vocab_size=800))
    assert len(tokenizer) <= 800 and tokenizer.decode(tokenizer(KOREAN[0])["input_ids"]) == KOREAN[0]
    assert "<|im_start|>user" in render(tokenizer, MESSAGES[1:])


def test_cache_builds_once_even_when_raced(tmp_path, monkeypatch):
    monkeypatch.setenv("DIALSUM_TINY_CACHE", str(tmp_path))
    results, errors = [], []

    def build():
        try:
            results.append(tiny_model_cached("bart"))
        except Exception as error:  # noqa: BLE001 - collected and asserted below
            errors.append(error)

    threads = [threading.Thread(target=build) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors and len(set(results)) == 1
    path = results[0]
    assert path.parent == tmp_path and [p.name for p in tmp_path.iterdir()] == [path.name]  # no scratch left
    stamp = (path / "model.safetensors").stat().st_mtime_ns
    assert tiny_model_cached("bart") == path and (path / "model.safetensors").stat().st_mtime_ns == stamp
