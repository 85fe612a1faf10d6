"""The ../shared rule: a missing real file fails under CI and is a skip with its reason elsewhere, never a stand-in."""

from __future__ import annotations

import pytest

import conftest


@pytest.mark.parametrize("ci", ["true", "1", "yes"])
def test_missing_real_dev_fails_under_ci(ci, monkeypatch, tmp_path):
    monkeypatch.setattr(conftest, "SHARED", tmp_path / "shared")
    monkeypatch.setenv("CI", ci)
    with pytest.raises(BaseException) as outcome:  # a skip raised here must fail this test, not skip it
        conftest.real_dev_file()
    assert outcome.type is pytest.fail.Exception
    assert "../shared/data/dialogsum-ko/dev.csv not present" in str(outcome.value)


@pytest.mark.parametrize("ci", [None, "", "0", "false"])
def test_missing_real_dev_is_a_skip_with_the_reason_elsewhere(ci, monkeypatch, tmp_path):
    monkeypatch.setattr(conftest, "SHARED", tmp_path / "shared")
    if ci is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", ci)
    with pytest.raises(BaseException) as outcome:
        conftest.real_dev_file()
    assert outcome.type is pytest.skip.Exception
    assert "../shared/data/dialogsum-ko/dev.csv not present" in str(outcome.value)


def test_present_real_dev_is_the_real_file(monkeypatch, tmp_path):
    dev = tmp_path / "shared" / "data" / "dialogsum-ko" / "dev.csv"
    dev.parent.mkdir(parents=True)
    dev.write_text("fname,dialogue,summary,topic\n", encoding="utf-8")
    monkeypatch.setattr(conftest, "SHARED", tmp_path / "shared")
    monkeypatch.setenv("CI", "true")
    assert conftest.real_dev_file() == dev
