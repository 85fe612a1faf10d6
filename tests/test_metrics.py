"""Competition scoring: ROUGE on Kiwi morphemes, multi-reference averaging, foreign scripts, file evaluation."""

from __future__ import annotations

import csv
import importlib.util
from pathlib import Path
from statistics import fmean

import pytest

from conftest import SHARED, shared_file
from dialsum.errors import DialsumError
from dialsum.evaluate import evaluate_scheme_files
from dialsum.metrics import (
    get_kiwi,
    score,
    score_rows,
    tokenize_texts,
)
from dialsum.schemes import format_scheme_table
from dialsum.scripts import SCRIPT_RANGES, foreign_script_chars, has_foreign_script

KO_DEV = SHARED / "data" / "dialogsum-ko" / "dev.csv"
EN_TEST = SHARED / "data" / "dialogsum-en" / "test.csv"


def _rows(path: Path) -> list[dict[str, str]]:
    shared_file(str(path.relative_to(SHARED)))  # absent: a failure under CI, a skip elsewhere
    with path.open(encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


def _write_csv(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)
    return path


@pytest.fixture(scope="module")
def kiwi():
    """Load Kiwi once for the module (~3-4 s); every kiwi-tokenized score below reuses it."""
    return get_kiwi()


@pytest.fixture(scope="module")
def ko_dev() -> list[dict[str, str]]:
    return _rows(KO_DEV)


# ---------------------------------------------------------------- ROUGE on Korean


def test_identical_predictions_score_100(kiwi, ko_dev):
    summaries = [row["summary"] for row in ko_dev]
    result = score(summaries, summaries)
    for key in ("rouge1", "rouge2", "rougeL", "final_score"):
        assert result[key] == pytest.approx(100.0)
    assert result["rouge_sum"] == pytest.approx(300.0)
    assert result["n"] == len(ko_dev) == 499
    assert result["empty_predictions"] == 0
    assert result["pred_len"] == result["ref_len"] > 0


def test_hangul_partial_overlap_hand_computed(kiwi):
    prediction = "두 사람은 저녁 식사 메뉴에 대해 이야기한다."
    reference = "두 사람은 점심 메뉴를 정한다."
    pred = [t.form for t in kiwi.tokenize(prediction)]
    ref = [t.form for t in kiwi.tokenize(reference)]
    assert pred == ["두", "사람", "은", "저녁", "식사", "메뉴", "에", "대하", "어", "이야기", "하", "ᆫ다", "."]
    assert ref == ["두", "사람", "은", "점심", "메뉴", "를", "정하", "ᆫ다", "."]
    # unigrams: 6 shared (두 사람 은 메뉴 ᆫ다 .) of 13 and 9 -> F1 = 2*6/(13+9); the LCS is the same 6 tokens
    # bigrams: 3 shared (두-사람, 사람-은, ᆫ다-.) of 12 and 8 -> F1 = 2*3/(12+8)
    result = score([prediction], [reference])
    assert result["rouge1"] == pytest.approx(100 * 12 / 22)
    assert result["rouge2"] == pytest.approx(100 * 6 / 20)
    assert result["rougeL"] == pytest.approx(100 * 12 / 22)
    assert result["final_score"] == pytest.approx(100 * (12 / 22 + 6 / 20 + 12 / 22) / 3)


def test_rouge_score_default_tokenizer_drops_hangul():
    """Why we pass our own tokenizer: rouge-score's default keeps [a-z0-9] only, so Korean scores 0."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rouge1", "rougeL"])
    text = "철수는 영희에게 책을 빌려주었다."
    assert scorer.score(text, text)["rouge1"].fmeasure == 0.0
    assert score([text], [text], tokenizer="whitespace")["rouge1"] == pytest.approx(100.0)


def test_kiwi_morphemes_give_partial_credit_across_particles(kiwi):
    # Whitespace tokens differ entirely ("철수가" vs "철수는"), morphemes share the stem.
    kiwi_r1 = score(["철수가 학교에 갔다"], ["철수는 학교로 갔다"])["rouge1"]
    ws_r1 = score(["철수가 학교에 갔다"], ["철수는 학교로 갔다"], tokenizer="whitespace")["rouge1"]
    assert kiwi_r1 > ws_r1


# ---------------------------------------------------------------- multi-reference averaging


def test_multi_reference_mean_hand_computed():
    # "a b" vs "a b c": P=1, R=2/3, F1=0.8 ; vs "a": P=1/2, R=1, F1=2/3  -> mean 0.7333
    # bigrams: {ab} vs {ab, bc}: F1=2/3 ; vs "a" (no bigram): 0          -> mean 1/3
    [row] = score_rows(["a b"], [["a b c", "a", "   "]], tokenizer="whitespace")  # blank ref skipped
    assert row["rouge1"] == pytest.approx(100 * (0.8 + 2 / 3) / 2)
    assert row["rouge2"] == pytest.approx(100 * (2 / 3 + 0) / 2)
    assert row["rougeL"] == pytest.approx(100 * (0.8 + 2 / 3) / 2)
    result = score(["a b", "x"], [["a b c", "a"], "x"], tokenizer="whitespace")  # str = one reference
    assert result["rouge1"] == pytest.approx((row["rouge1"] + 100) / 2)
    assert result["final_score"] == pytest.approx(result["rouge_sum"] / 3)


def test_three_references_equal_mean_of_single_reference_scores():
    rows = _rows(EN_TEST)[:100]
    references = [[row["summary1"], row["summary2"], row["summary3"]] for row in rows]
    predictions = [row["summary2"].split(".")[0] for row in rows]  # a partial, plausible prediction
    multi = score(predictions, references, tokenizer="whitespace")
    singles = [score(predictions, [refs[i] for refs in references], tokenizer="whitespace") for i in range(3)]
    for key in ("rouge1", "rouge2", "rougeL"):
        assert multi[key] == pytest.approx(fmean(s[key] for s in singles))
        assert 0 < multi[key] < 100


def test_row_without_reference_raises():
    with pytest.raises(DialsumError, match="row 2"):
        score(["a", "b"], [["a"], ["", " "]], tokenizer="whitespace")
    with pytest.raises(DialsumError, match="2 predictions but 1"):
        score(["a", "b"], [["a"]], tokenizer="whitespace")


def test_empty_predictions_score_zero_and_are_counted(kiwi):
    result = score(["", "   ", "철수가 밥을 먹었다"], ["영희가 학교에 갔다", "철수", "철수가 밥을 먹었다"])
    rows = score_rows(["", "   "], ["영희가 학교에 갔다", "철수"])
    assert all(row[k] == 0.0 for row in rows for k in ("rouge1", "rouge2", "rougeL"))
    assert result["empty_predictions"] == 2
    assert result["rouge1"] == pytest.approx(100 / 3)


def test_unknown_tokenizer_and_missing_mecab(monkeypatch):
    import sys

    import dialsum.metrics

    with pytest.raises(DialsumError, match="kiwi, mecab, whitespace"):
        score(["a"], ["a"], tokenizer="spacy")
    # python-mecab-ko absent (simulated where it is installed): one clear error naming the extra
    monkeypatch.setitem(sys.modules, "mecab", None)
    dialsum.metrics._get_mecab.cache_clear()
    try:
        with pytest.raises(DialsumError, match=r"dialsum\[mecab\]"):
            score(["아직 분석하지 않은 문장"], ["아직 분석하지 않은 문장"], tokenizer="mecab")
    finally:
        dialsum.metrics._get_mecab.cache_clear()


def test_mecab_morphemes_hand_computed():
    if importlib.util.find_spec("mecab") is None:
        pytest.skip("python-mecab-ko is not installed (pip install 'dialsum[mecab]')")
    prediction, reference = "철수가 학교에 갔다", "철수는 학교로 갔다"
    assert tokenize_texts([prediction, reference], "mecab") == [
        ("철수", "가", "학교", "에", "갔", "다"),
        ("철수", "는", "학교", "로", "갔", "다"),
    ]
    # unigrams 4 of 6 and 6 (철수 학교 갔 다), bigrams 1 of 5 and 5 (갔-다), LCS 4
    result = score([prediction], [reference], tokenizer="mecab")
    assert (result["rouge1"], result["rouge2"], result["rougeL"]) == pytest.approx((100 * 4 / 6, 100 / 5, 100 * 4 / 6))


# ---------------------------------------------------------------- foreign scripts

SAMPLES = {
    "Han": ["韓国", "漢字", "\u3400", "\uf900"],
    "Hiragana": ["ありがとう"],
    "Katakana": ["カタカナ", "ｶﾀｶﾅ", "\u31f0"],  # full width, halfwidth, phonetic extension
    "Cyrillic": ["Привет"],
    "Thai": ["สวัสดี"],
    "Arabic": ["مرحبا"],
    "Hebrew": ["שלום"],
    "Greek": ["Γειά σου"],
    "Devanagari": ["नमस्ते"],
}


def test_every_script_has_a_sample():
    assert set(SAMPLES) == set(SCRIPT_RANGES)


@pytest.mark.parametrize("script", sorted(SAMPLES))
def test_each_script_is_flagged_by_its_own_name_only(script):
    for text in SAMPLES[script]:
        sentence = f"#Person1#은 {text}라고 말했다."
        assert has_foreign_script(sentence), text  # default list covers every script
        assert has_foreign_script(sentence, [script]), text
        others = [name for name in SCRIPT_RANGES if name != script]
        assert not has_foreign_script(sentence, others), text
        assert foreign_script_chars(sentence, [script]) == set(text.replace(" ", ""))


@pytest.mark.parametrize(
    "text",
    [
        "Mr. Smith $5",
        "#Person1#은 Ms. Dawson에게 #PhoneNumber#로 전화했다.",
        "가 ㅋㅋ ㆍ 한글",  # conjoining jamo, compatibility jamo, araea
        "1,234.5% … · 「」 《》 ～ 、。!?",
        "",
    ],
)
def test_latin_digits_punctuation_hangul_never_count(text):
    assert has_foreign_script(text) is False
    assert foreign_script_chars(text) == set()


def test_unknown_script_name_lists_valid_names():
    with pytest.raises(DialsumError, match="Han, Hiragana, Katakana"):
        has_foreign_script("x", ["Klingon"])
    assert has_foreign_script("韓", ["han"])  # names are case-insensitive
    assert not has_foreign_script("韓", [])


def test_foreign_rate_in_scores():
    result = score(["a 韓国", "a b", "Привет", "c"], ["a", "a b", "a", "c"], tokenizer="whitespace")
    assert result["foreign_rate"] == pytest.approx(50.0)  # percent
    rows = score_rows(["a 韓国"], ["a"], tokenizer="whitespace", forbidden_scripts=["Cyrillic"])
    assert rows[0]["foreign"] is False


# ---------------------------------------------------------------- files


def test_evaluate_files_against_dialogue_file(kiwi, ko_dev, tmp_path):
    rows = [[row["fname"], row["summary"]] for row in ko_dev[:20]]
    rows[3][1] = ""  # an empty cell is an empty prediction, scored 0
    predictions = _write_csv(tmp_path / "pred.csv", ["fname", "summary"], rows)
    references = _write_csv(
        tmp_path / "ref.csv",
        ["fname", "dialogue", "summary"],
        [[r["fname"], r["dialogue"], r["summary"]] for r in ko_dev[:20]],
    )
    summary, per_row = evaluate_scheme_files(predictions, references)
    assert summary["n"] == 20 and summary["empty_predictions"] == 1
    assert summary["rouge1"] == pytest.approx(100 * 19 / 20)
    assert per_row[3]["fname"] == ko_dev[3]["fname"] and per_row[3]["rouge1"] == 0.0
    assert per_row[0]["rouge2"] == pytest.approx(100.0)
    assert format_scheme_table(summary).row_count > 5


def test_evaluate_files_id_mismatch_names_ids(ko_dev, tmp_path):
    references = _write_csv(
        tmp_path / "ref.csv", ["fname", "summary"], [[r["fname"], r["summary"]] for r in ko_dev[:10]]
    )
    rows = [[r["fname"], r["summary"]] for r in ko_dev[2:10]] + [["test_999", "x"]]
    predictions = _write_csv(tmp_path / "pred.csv", ["fname", "summary"], rows)
    with pytest.raises(DialsumError) as error:
        evaluate_scheme_files(predictions, references)
    message = str(error.value)
    assert ko_dev[0]["fname"] in message and ko_dev[1]["fname"] in message and "test_999" in message


def test_evaluate_files_numbered_references(tmp_path):
    rows = _rows(EN_TEST)[:30]
    references = _write_csv(
        tmp_path / "ref.csv",
        ["fname", "summary1", "summary2", "summary3"],
        [[r["fname"], r["summary1"], r["summary2"], r["summary3"]] for r in rows],
    )
    # submission format: unnamed index column first, rows in another order
    predictions = _write_csv(
        tmp_path / "pred.csv",
        ["", "fname", "summary"],
        [[str(i), r["fname"], r["summary1"]] for i, r in enumerate(reversed(rows))],
    )
    summary, per_row = evaluate_scheme_files(predictions, references, tokenizer="whitespace")
    expected = score(
        [r["summary1"] for r in rows],
        [[r["summary1"], r["summary2"], r["summary3"]] for r in rows],
        tokenizer="whitespace",
    )
    assert summary["rouge1"] == pytest.approx(expected["rouge1"])
    assert [row["fname"] for row in per_row] == [r["fname"] for r in rows]


def test_evaluate_files_without_reference_column(tmp_path):
    references = _write_csv(tmp_path / "test.csv", ["fname", "dialogue"], [["t1", "#Person1#: 안녕"]])
    predictions = _write_csv(tmp_path / "pred.csv", ["fname", "summary"], [["t1", "인사"]])
    with pytest.raises(DialsumError, match="no reference column"):
        evaluate_scheme_files(predictions, references, tokenizer="whitespace")
