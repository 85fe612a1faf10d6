"""Readers for the competition CSV and Korean_DCS JSON/JSONL: real files, the bundled sample, and bad input."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from conftest import SHARED
from conftest import shared_file as conftest_shared_file
from dialsum.data import SAMPLE_DIR, DataError, Dialogue, Turn, load_dialogues, read_table, write_predictions

DATA = SHARED / "data"


def shared_file(relative: str) -> Path:
    """A file under ../shared/data: a failure under CI when absent, a skip elsewhere (conftest.shared_file)."""
    return conftest_shared_file(f"data/{relative}")


def write_csv(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.write_bytes(text.encode(encoding))
    return path


# --------------------------------------------------------------------------------------------------
# Real files from ../shared
# --------------------------------------------------------------------------------------------------


def test_competition_dev():
    dialogues = load_dialogues(shared_file("dialogsum-ko/dev.csv"))
    assert len(dialogues) == 499
    assert all(len(d.references) == 1 for d in dialogues)
    ids = [d.id for d in dialogues]
    assert ids[:3] == ["dev_0", "dev_1", "dev_2"]
    assert ids == sorted(ids, key=lambda i: int(i.split("_")[1]))  # file order
    assert "dev_475" not in ids
    assert dialogues[0].turns[0].speaker == "#Person1#"
    assert dialogues[0].topic == "의사 상담"
    assert all(d.turns and not d.preamble for d in dialogues)
    assert all(t.speaker.startswith("#Person") for d in dialogues for t in d.turns)
    utterances = [t.utterance for d in dialogues for t in d.turns]
    assert any("#PhoneNumber#" in u for u in utterances)
    assert not any(re.match(r"#Person\d+#\s*:", u) for u in utterances)  # tags were split off


def test_competition_test_has_no_references():
    dialogues = load_dialogues(shared_file("dialogsum-ko/test.csv"))
    assert len(dialogues) == 499
    assert all(d.references == [] and d.topic is None for d in dialogues)
    assert "test_466" not in {d.id for d in dialogues}


def test_2024_edition_crlf():
    path = shared_file("dialogsum-ko-2024/dev.csv")
    assert b"\r\n" in path.read_bytes()
    dialogues = load_dialogues(path)
    assert len(dialogues) == 499
    for d in dialogues:
        assert all("\r" not in t.utterance and "\r" not in t.speaker for t in d.turns)
        assert all("\r" not in r for r in d.references)
    assert len(load_dialogues(shared_file("dialogsum-ko-2024/test.csv"))) == 499


def test_dialogsum_en_three_references():
    dialogues = load_dialogues(shared_file("dialogsum-en/test.csv"))
    assert len(dialogues) == 500
    assert all(len(d.references) == 3 for d in dialogues)


def test_korean_dcs_sample():
    dialogues = load_dialogues(shared_file("korean-dcs/sample.json"))
    assert len(dialogues) == 1
    d = dialogues[0]
    assert d.topic == "해외여행"
    assert len(d.references) == 1
    # Consecutive utterances by one speaker stay separate turns.
    assert d.turns[0].speaker == d.turns[1].speaker == "SD2000001"
    assert any(a.speaker == b.speaker for a, b in zip(d.turns, d.turns[1:]))


def test_sample_submission_via_read_table():
    rows = read_table(shared_file("dialogsum-ko/sample_submission.csv"), ["fname", "summary"])
    assert len(rows) == 499
    assert set(rows[0]) == {"fname", "summary"}  # the unnamed index column is ignored
    assert rows[0]["fname"] == "test_0"


# --------------------------------------------------------------------------------------------------
# Bundled sample data
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "count", "prefix", "has_references"),
    [("train.csv", 40, "train", True), ("dev.csv", 10, "dev", True), ("test.csv", 10, "test", False)],
)
def test_bundled_csv(name, count, prefix, has_references):
    dialogues = load_dialogues(SAMPLE_DIR / name)
    assert [d.id for d in dialogues] == [f"{prefix}_{i}" for i in range(count)]
    for d in dialogues:
        assert 4 <= len(d.turns) <= 12
        assert 2 <= len({t.speaker for t in d.turns}) <= 4
        assert all(t.speaker.startswith("#Person") and t.utterance for t in d.turns)
        assert d.preamble == ""
        assert len(d.references) == (1 if has_references else 0)
        assert (d.topic is not None) == has_references


def test_bundled_train_has_long_dialogues_and_masks():
    dialogues = load_dialogues(SAMPLE_DIR / "train.csv")
    lengths = [sum(len(t.utterance) for t in d.turns) for d in dialogues]
    assert max(lengths) >= 1500
    text = "\n".join(t.utterance for d in dialogues for t in d.turns)
    for mask in ("#PhoneNumber#", "#Address#", "#DateOfBirth#", "#Email#"):
        assert mask in text
    assert any("#Person" in r for d in dialogues for r in d.references)


def test_bundled_dcs():
    dialogues = load_dialogues(SAMPLE_DIR / "dcs_sample.jsonl")
    assert len(dialogues) == 5
    assert all(d.references and d.topic and d.turns for d in dialogues)
    assert all(t.speaker.startswith("SD") for d in dialogues for t in d.turns)
    assert dialogues[1].topic == "음식, 요리"  # a keyword list is joined
    assert dialogues[3].topic == "여행"  # a keyword string is used as is
    assert any(a.speaker == b.speaker for d in dialogues for a, b in zip(d.turns, d.turns[1:]))


# --------------------------------------------------------------------------------------------------
# Parsing details
# --------------------------------------------------------------------------------------------------


def test_multiline_utterance_preamble_and_inline_tags(tmp_path):
    text = (
        "fname,dialogue,summary\n"
        'x_0,"전화 통화 내용입니다.\n'
        "#Person1#: 안녕하세요. #Person2#, 번호가 #PhoneNumber# 맞나요?\n"
        "둘째 줄도 같은 말입니다.\n"
        "\n"
        '#Person2# : 네, 맞아요.  \n#Person10#: 끼어들어서 죄송해요.","#Person1#은 #Person2#에게 번호를 묻는다."\n'
    )
    [d] = load_dialogues(write_csv(tmp_path / "x.csv", text))
    assert d.preamble == "전화 통화 내용입니다."
    assert d.turns == [
        Turn("#Person1#", "안녕하세요. #Person2#, 번호가 #PhoneNumber# 맞나요?\n둘째 줄도 같은 말입니다."),
        Turn("#Person2#", "네, 맞아요."),
        Turn("#Person10#", "끼어들어서 죄송해요."),
    ]
    assert d.references == ["#Person1#은 #Person2#에게 번호를 묻는다."]
    assert d.topic is None


def test_bom_crlf_and_extra_references(tmp_path):
    text = (
        "fname,dialogue,summary,summary2,summary1,topic\r\n"
        'a_0,"#Person1#: 안녕.\r\n#Person2#: 안녕!",첫째,셋째,둘째,인사\r\n'
        'a_1,"#Person1#: 잘 가.\r\n#Person2#: 또 봐.",요약,,,\r\n'
    )
    path = write_csv(tmp_path / "bom.csv", text, encoding="utf-8-sig")
    assert path.read_bytes().startswith(b"\xef\xbb\xbf")
    a, b = load_dialogues(path)
    assert a.id == "a_0"  # the BOM is not part of the first column name
    assert a.turns == [Turn("#Person1#", "안녕."), Turn("#Person2#", "안녕!")]
    assert a.references == ["첫째", "둘째", "셋째"]  # summary, then summary1, summary2 in numeric order
    assert b.references == ["요약"] and b.topic is None


def test_unnamed_index_column_is_ignored(tmp_path):
    path = write_csv(tmp_path / "idx.csv", ',fname,dialogue\n0,t_0,"#Person1#: 네.\n#Person2#: 좋아요."\n')
    [d] = load_dialogues(path)
    assert d.id == "t_0" and len(d.turns) == 2


def test_dcs_json_list(tmp_path):
    records = [
        {
            "id": "r1",
            "input": {"conversation": [{"speaker": "A", "utterance": " 하나 "}, {"speaker": "A", "utterance": "둘"}]},
        },
        {
            "id": "r2",
            "input": {"conversation": [{"speaker": "B", "utterance": "셋"}], "subject_keyword": ["가", "나"]},
            "output": "요약",
        },
    ]
    path = tmp_path / "dcs.json"
    path.write_text(json.dumps(records, ensure_ascii=False), encoding="utf-8")
    r1, r2 = load_dialogues(path)
    assert r1 == Dialogue(id="r1", turns=[Turn("A", "하나"), Turn("A", "둘")], topic=None, references=[])
    assert r2.topic == "가, 나" and r2.references == ["요약"]


def test_write_predictions_round_trip(tmp_path):
    path = tmp_path / "out" / "pred.csv"
    write_predictions(path, ["test_0", "test_1"], ["첫 요약, 쉼표 포함", "둘째\n줄바꿈"])
    assert path.read_bytes().startswith(b"fname,summary\n")
    rows = read_table(path, ["fname", "summary"])
    assert rows == [
        {"fname": "test_0", "summary": "첫 요약, 쉼표 포함"},
        {"fname": "test_1", "summary": "둘째\n줄바꿈"},
    ]


# --------------------------------------------------------------------------------------------------
# Bad input: a DataError (a ValueError) whose message names file, row/record and field
# --------------------------------------------------------------------------------------------------


def load_error(path: Path) -> str:
    with pytest.raises(DataError) as info:
        load_dialogues(path)
    assert isinstance(info.value, ValueError)
    message = str(info.value)
    assert "\n" not in message
    assert path.name in message
    return message


GOOD_ROW = '"#Person1#: 안녕하세요.\n#Person2#: 반가워요."'


def test_missing_file(tmp_path):
    message = load_error(tmp_path / "nope.csv")
    assert "not found" in message


def test_unsupported_extension(tmp_path):
    message = load_error(write_csv(tmp_path / "data.tsv", "fname\tdialogue\n"))
    assert ".csv" in message and ".jsonl" in message


def test_cp949_file(tmp_path):
    path = write_csv(tmp_path / "excel.csv", f"fname,dialogue\nx_0,{GOOD_ROW}\n", encoding="cp949")
    message = load_error(path)
    assert "not UTF-8" in message and "re-save" in message and "line 2" in message


def test_missing_dialogue_column(tmp_path):
    message = load_error(write_csv(tmp_path / "cols.csv", "fname,text,summary\nx_0,안녕,요약\n"))
    assert "'dialogue'" in message and "fname, text, summary" in message


def test_empty_file_and_header_only(tmp_path):
    assert "empty" in load_error(write_csv(tmp_path / "empty.csv", ""))
    assert "no data rows" in load_error(write_csv(tmp_path / "header.csv", "fname,dialogue\n"))
    assert "no records" in load_error(write_csv(tmp_path / "empty.jsonl", "\n"))


def test_empty_dialogue(tmp_path):
    path = write_csv(tmp_path / "dev.csv", f'fname,dialogue\nd_0,{GOOD_ROW}\nd_1,"  "\n')
    message = load_error(path)
    assert "row 2" in message and "line 4" in message and "fname=d_1" in message and "'dialogue'" in message


def test_tags_without_text(tmp_path):
    message = load_error(write_csv(tmp_path / "tags.csv", 'fname,dialogue\nd_0,"#Person1#:\n#Person2#: "\n'))
    assert "row 1" in message and "'dialogue'" in message


def test_empty_fname(tmp_path):
    message = load_error(write_csv(tmp_path / "ids.csv", f"fname,dialogue\n,{GOOD_ROW}\n"))
    assert "row 1" in message and "'fname'" in message


def test_duplicate_id(tmp_path):
    path = write_csv(tmp_path / "dup.csv", f"fname,dialogue\nd_0,{GOOD_ROW}\nd_1,{GOOD_ROW}\nd_0,{GOOD_ROW}\n")
    message = load_error(path)
    assert "row 3" in message and "row 1" in message and "d_0" in message and "fname" in message


def test_wrong_field_count(tmp_path):
    message = load_error(write_csv(tmp_path / "commas.csv", "fname,dialogue\nd_0,#Person1#: 네, 알겠어요.\n"))
    assert "row 1" in message and "line 2" in message and "3 fields" in message


def test_bad_jsonl_line(tmp_path):
    good = json.dumps({"id": "r1", "input": {"conversation": [{"speaker": "A", "utterance": "안녕"}]}})
    path = write_csv(tmp_path / "bad.jsonl", f'{good}\n{{"id": "r2", \n')
    message = load_error(path)
    assert "line 2" in message and "invalid JSON" in message


def test_bad_json_file(tmp_path):
    message = load_error(write_csv(tmp_path / "bad.json", '[\n  {"id": "r1",}\n]'))
    assert "invalid JSON at line 2" in message


def test_dcs_missing_conversation(tmp_path):
    records = [{"id": "r1", "input": {"subject_keyword": ["여행"]}, "output": "요약"}]
    path = tmp_path / "dcs.json"
    path.write_text(json.dumps(records, ensure_ascii=False), encoding="utf-8")
    message = load_error(path)
    assert "record 1" in message and "id=r1" in message and "'input.conversation'" in message


def test_dcs_bad_utterance_and_duplicate_id(tmp_path):
    bad = {"id": "r1", "input": {"conversation": [{"speaker": "A", "utterance": "안녕"}, {"speaker": "B"}]}}
    path = write_csv(tmp_path / "dcs.jsonl", json.dumps(bad) + "\n")
    assert "'input.conversation[1].utterance' is missing" in load_error(path)

    good = {"id": "r1", "input": {"conversation": [{"speaker": "A", "utterance": "안녕"}]}}
    path = write_csv(tmp_path / "dup.jsonl", json.dumps(good) + "\n\n" + json.dumps(good) + "\n")
    message = load_error(path)
    assert "line 3" in message and "line 1" in message and "'r1'" in message

    path = write_csv(tmp_path / "noid.jsonl", json.dumps({"input": good["input"]}) + "\n")
    assert "line 1" in (message := load_error(path)) and "'id'" in message


def test_read_table_missing_column_for_predictions(tmp_path):
    path = write_csv(tmp_path / "pred.csv", "id,summary\nt_0,요약\n")
    with pytest.raises(DataError, match=r"pred\.csv: missing required column 'fname' \(columns found: id, summary\)"):
        read_table(path, ["fname", "summary"])


def test_strip_whitespace_off_keeps_the_source_text(tmp_path):
    """data.strip_whitespace=false: DCS speakers, utterances ('. \\n' inside), keywords and summaries as written."""
    record = {
        "id": " d1 ",
        "input": {
            "conversation": [
                {"speaker": "SD1", "utterance": "안녕. \n 반가워 "},
                {"speaker": "SD2", "utterance": " 응"},
            ],
            "subject_keyword": ["여행 ", "음식"],
        },
        "output": "요약이다. ",
    }
    path = tmp_path / "d.json"
    path.write_text(json.dumps([record], ensure_ascii=False), encoding="utf-8")
    raw = load_dialogues(path, strip_whitespace=False)[0]
    assert raw.id == "d1"
    assert [t.utterance for t in raw.turns] == ["안녕. \n 반가워 ", " 응"]
    assert (raw.topic, raw.references) == ("여행 , 음식", ["요약이다. "])
    stripped = load_dialogues(path)[0]
    assert [t.utterance for t in stripped.turns] == ["안녕. \n 반가워", "응"]
    assert (stripped.topic, stripped.references) == ("여행, 음식", ["요약이다."])


def test_strip_whitespace_off_csv_keeps_lines_but_not_the_separator_space(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text('fname,dialogue,summary\nx,"#Person1#: 안녕 \n  더 \n#Person2#:  응",요약 \n', encoding="utf-8")
    raw = load_dialogues(path, strip_whitespace=False)[0]
    assert [t.utterance for t in raw.turns] == ["안녕 \n  더 ", " 응"] and raw.references == ["요약 "]
    stripped = load_dialogues(path)[0]
    assert [t.utterance for t in stripped.turns] == ["안녕\n더", "응"] and stripped.references == ["요약"]
