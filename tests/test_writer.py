"""The writer layer: outputs are checked before anything is written, and every write is atomic."""

from __future__ import annotations

import os

import pytest

from dialsum.errors import DialsumError
from dialsum.writer import OutputPlan, atomic_directory, open_atomic, write_csv, write_json, write_text


def test_an_output_that_is_an_input_is_refused_also_through_a_symlink_or_a_hard_link(tmp_path):
    data = tmp_path / "t.csv"
    data.write_text("fname,dialogue\n", encoding="utf-8")
    (tmp_path / "link.csv").symlink_to(data)
    os.link(data, tmp_path / "hard.csv")
    for given in (data, tmp_path / "link.csv", tmp_path / "hard.csv", tmp_path / "sub" / ".." / "t.csv"):
        with pytest.raises(DialsumError, match="is an input of this command"):
            OutputPlan([data], overwrite=True).file(given, "--output")
    assert data.read_text(encoding="utf-8") == "fname,dialogue\n"


@pytest.mark.parametrize(
    "make, given, message",
    [
        (lambda d: (d / "out").mkdir(), "out", "is a directory"),
        (lambda d: (d / "file").write_text("x"), "file/sub/out.csv", "is a file, so no folder can be made"),
        (lambda d: (d / "out.csv").write_text("old"), "out.csv", "already exists; pass --overwrite"),
    ],
)
def test_bad_output_paths_are_one_line_naming_the_flag(tmp_path, make, given, message):
    make(tmp_path)
    with pytest.raises(DialsumError, match=message) as error:
        OutputPlan().file(tmp_path / given, "--json")
    assert str(error.value).startswith(f"--json {tmp_path / given}:") and "\n" not in str(error.value)


def test_overwrite_replaces_an_existing_output_and_a_missing_folder_is_fine(tmp_path):
    (tmp_path / "out.csv").write_text("old")
    assert OutputPlan(overwrite=True).file(tmp_path / "out.csv") == tmp_path / "out.csv"
    assert OutputPlan().file(tmp_path / "new" / "deeper" / "out.csv") is not None  # created when written
    assert not (tmp_path / "new").exists()  # checking writes nothing


def test_one_path_for_two_outputs_is_refused(tmp_path):
    plan = OutputPlan()
    plan.file(tmp_path / "a.json", "--json")
    with pytest.raises(DialsumError, match="also the path given to --json"):
        plan.file(tmp_path / "a.json", "--per-sample")


def test_an_output_directory_must_be_new_or_empty_unless_overwrite(tmp_path):
    (tmp_path / "cmp").mkdir()
    OutputPlan().directory(tmp_path / "cmp")  # empty: fine
    (tmp_path / "cmp" / "compare.md").write_text("x")
    with pytest.raises(DialsumError, match="not empty; pass --overwrite"):
        OutputPlan().directory(tmp_path / "cmp", "--output")
    OutputPlan(overwrite=True).directory(tmp_path / "cmp")
    with pytest.raises(DialsumError, match="is an input"):
        OutputPlan([tmp_path / "cmp"], overwrite=True).directory(tmp_path / "cmp")


def test_a_write_cut_short_leaves_the_old_file_whole_and_no_temporary(tmp_path):
    """Mutation caught: writing in place (open(path, 'w')) leaves a truncated file when the write fails."""
    target = tmp_path / "scores.json"
    write_json(target, {"rouge1": 1.0})
    before = target.read_bytes()
    with pytest.raises(RuntimeError):
        with open_atomic(target) as handle:
            handle.write('{"rouge1": ')
            raise RuntimeError("killed mid-write")
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scores.json"]


def test_written_files_are_exact_and_readable_by_others(tmp_path):
    write_text(tmp_path / "a" / "t.txt", "한국어\r\nline")
    assert (tmp_path / "a" / "t.txt").read_bytes() == "한국어\r\nline".encode()  # no newline translation
    write_csv(tmp_path / "p.csv", ["fname", "summary"], [["dev_0", 'a,"b"\nc']])
    assert (tmp_path / "p.csv").read_text(encoding="utf-8") == 'fname,summary\ndev_0,"a,""b""\nc"\n'
    assert (tmp_path / "p.csv").stat().st_mode & 0o044  # not mkstemp's private 0600


def test_atomic_directory_replaces_whole_or_not_at_all(tmp_path):
    model = tmp_path / "model"
    with atomic_directory(model) as scratch:
        (scratch / "config.json").write_text("{}")
    with pytest.raises(RuntimeError):
        with atomic_directory(model) as scratch:
            (scratch / "config.json").write_text("")  # the 0-byte config a kill used to leave
            raise RuntimeError("killed")
    assert (model / "config.json").read_text() == "{}"
    with atomic_directory(model) as scratch:
        (scratch / "weights").write_text("w")
    assert sorted(p.name for p in model.iterdir()) == ["weights"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
