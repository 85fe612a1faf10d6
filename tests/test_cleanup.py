"""Summary clean-up: tag spellings, <think> blocks, decoding artefacts, unfinished sentences; counts; no false hits."""

from __future__ import annotations

import pytest

from conftest import SAMPLE, shared_file
from dialsum.cleanup import (
    clean,
    clean_all,
    drop_unfinished_sentence,
    normalize_tags,
    remove_artifacts,
    remove_foreign_chars,
    remove_think,
)
from dialsum.config import CleanupSettings, config_from_dict
from dialsum.data import load_dialogues

ALL_ON = CleanupSettings(drop_unfinished_sentence=True, remove_foreign_chars=True)

# Strings of the kinds the issue lists. The last is verbatim from dialogsum-ko dev.csv (a reference that spells the
# tags 'Person1'); the others are LLM outputs of the shapes the published write-ups report.
TAG_CASES = [
    ("#Person 1#은 #Person 2#에게 회의 일정을 묻습니다.", "#Person1#은 #Person2#에게 회의 일정을 묻습니다."),
    ("# Person1 #는 # Person2 #와 저녁을 먹기로 합니다.", "#Person1#는 #Person2#와 저녁을 먹기로 합니다."),
    ("Person1: 비행기 표를 예약하고 싶어합니다.", "#Person1#: 비행기 표를 예약하고 싶어합니다."),
    (
        "#person2#는 #Person1#의 전화번호가 # PhoneNumber #인지 확인합니다.",
        "#Person2#는 #Person1#의 전화번호가 #PhoneNumber#인지 확인합니다.",
    ),
    ("#Person1#은 #Date Of Birth#를 알려줍니다.", "#Person1#은 #DateOfBirth#를 알려줍니다."),
    (
        "Person1은 컴퓨터 화면에 나타나는 광고 때문에 집중이 어렵습니다. "
        "Person2는 저렴한 가격의 앱을 사서 광고를 막을 것을 추천합니다.",
        "#Person1#은 컴퓨터 화면에 나타나는 광고 때문에 집중이 어렵습니다. "
        "#Person2#는 저렴한 가격의 앱을 사서 광고를 막을 것을 추천합니다.",
    ),
]


@pytest.mark.parametrize("raw,expected", TAG_CASES)
def test_tag_spellings_become_the_references_spelling(raw, expected):
    assert normalize_tags(raw) == expected


@pytest.mark.parametrize(
    "text",
    [
        "Salesperson1 모델은 단종되었습니다.",  # inside a word
        "Ms. Dawson은 person 2명을 더 고용합니다.",  # the English word, no tag
        "#Person1#은 #Person2#에게 #PhoneNumber#로 연락하라고 합니다.",  # already right
        "#Person1#과 #Person2#는 #Hashtag# 캠페인을 이야기합니다.",  # an unknown '#Word#' is not a mask
    ],
)
def test_tag_normalization_leaves_other_text_alone(text):
    assert normalize_tags(text) == text


def test_think_blocks_are_removed():
    qwen3 = "<think>\n\n</think>\n\n#Person1#은 #Person2#에게 길을 묻습니다."  # enable_thinking=False output
    reasoning = "<think>\n사용자가 대화 요약을 원한다. 두 사람은...\n</think>\n#Person1#은 #Person2#에게 길을 묻습니다."
    cut_off = "#Person1#은 길을 묻습니다. <think>\n음, 다시 보면"  # a block the generation never closed
    stray = "</think>\n\n#Person1#은 길을 묻습니다."
    assert clean(qwen3) == ("#Person1#은 #Person2#에게 길을 묻습니다.", ["remove_think"])
    assert clean(reasoning)[0] == "#Person1#은 #Person2#에게 길을 묻습니다."
    assert clean(cut_off)[0] == "#Person1#은 길을 묻습니다."
    assert "think" not in remove_think(reasoning) and "사용자" not in remove_think(reasoning)
    assert clean(stray) == ("#Person1#은 길을 묻습니다.", ["remove_think"])


def test_decoding_artefacts_are_removed():
    assert clean("#Person2#는 비행기 표를 예약합니다<unused68>.")[0] == "#Person2#는 비행기 표를 예약합니다."
    assert clean("#Person1#은 [unused3]늦은 이유를 설명합니다.")[0] == "#Person1#은 늦은 이유를 설명합니다."
    reserved = "<|reserved_special_token_5|>Mr. Smith는 \ufffd웃습니다."
    assert remove_artifacts(reserved).split() == ["Mr.", "Smith는", "웃습니다."]
    # stray Han: removed only when switched on (by default the foreign-script rate reports it)
    han = "#Person1#은 交通 문제로 늦었다고 설명합니다."
    assert clean(han)[0] == han
    assert clean(han, ALL_ON) == ("#Person1#은 문제로 늦었다고 설명합니다.", ["remove_foreign_chars"])
    # Latin names and the tags stay; Han goes only when Han is a forbidden script
    assert remove_foreign_chars("Mr. Smith와 #Person1#", ["Han"]) == "Mr. Smith와 #Person1#"
    assert remove_foreign_chars("漢字", []) == "漢字"


def test_unfinished_last_sentence():
    cut = "#Person1#과 #Person2#는 주말 계획을 이야기합니다. #Person2#는 영화를 보러 가자고 제"
    assert drop_unfinished_sentence(cut) == "#Person1#과 #Person2#는 주말 계획을 이야기합니다."
    # finished but for the full stop: kept
    finished = "#Person1#은 늦습니다. #Person2#는 기다립니다"
    assert drop_unfinished_sentence(finished) == finished
    assert drop_unfinished_sentence("마침표가 없는 하나의 문장") == "마침표가 없는 하나의 문장"  # no full stop at all
    assert drop_unfinished_sentence("Mr. Smith가 말합니다.") == "Mr. Smith가 말합니다."
    assert clean(cut)[0] == cut  # off by default
    assert clean(cut, ALL_ON)[0] == "#Person1#과 #Person2#는 주말 계획을 이야기합니다."


def test_switches_and_counts():
    texts = [
        "<think>\n\n</think>\n\n#Person 1#은 표를 삽니다<unused68>.",
        "#Person1#은 表를 삽니다. 그리고",
        "#Person1#은 표를 삽니다.",
    ]
    cleaned, counts = clean_all(texts, ALL_ON)
    assert cleaned == ["#Person1#은 표를 삽니다.", "#Person1#은 를 삽니다.", "#Person1#은 표를 삽니다."]
    assert counts == {
        "normalize_tags": 1,
        "remove_think": 1,
        "remove_artifacts": 1,
        "remove_foreign_chars": 1,
        "drop_unfinished_sentence": 1,
    }
    off = CleanupSettings(normalize_tags=False, remove_think=False, remove_artifacts=False)
    cleaned, counts = clean_all(texts, off)
    assert cleaned == [" ".join(t.split()) for t in texts] and counts == {}
    # the cleanup section of a config, as generation passes it
    config = config_from_dict({"model": {"name_or_path": "x"}, "cleanup": {"normalize_tags": False}})
    assert clean("#Person 1#은 삽니다.", config.cleanup)[0] == "#Person 1#은 삽니다."


def test_no_reference_summary_changes_except_the_one_with_bare_tags():
    """Every step on (unfinished-sentence cut included) over the real dev references and the sample: nothing a human
    wrote changes, except the dev reference that spells the tags 'Person1', which gets the dataset's spelling."""
    references = [
        r
        for path in (shared_file("data/dialogsum-ko/dev.csv"), SAMPLE / "train.csv")
        for d in load_dialogues(path)
        for r in d.references
    ]
    cleaned, counts = clean_all(references, ALL_ON, forbidden_scripts=["Han"])
    changed = [(a, b) for a, b in zip(references, cleaned) if " ".join(a.split()) != b]
    assert counts == {
        "normalize_tags": 1,
        "remove_think": 0,
        "remove_artifacts": 0,
        "remove_foreign_chars": 0,
        "drop_unfinished_sentence": 0,
    }
    assert len(changed) == 1 and changed[0][0].startswith("Person1은")


def test_control_characters_never_reach_a_summary():
    """An undertrained byte-level model emitted these (tiny Llama on the sample: U+0019, U+0003); a summary or a
    CSV cell never wants them. Mutation caught: remove_artifacts without the control-character rule."""
    text, changed = clean("#Person1#은 아이\x19와 함께 \x03간다.")
    assert text == "#Person1#은 아이와 함께 간다." and "remove_artifacts" in changed
    assert remove_artifacts("줄\t바꿈\n유지") == "줄\t바꿈\n유지"  # whitespace is clean_summary's to collapse
