"""rundir.py: the run directory's contract — which commit a run records, and one reader of JSON-lines files."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from conftest import ROOT
from dialsum.rundir import git_commit, read_jsonl


def _git(*args, cwd) -> str:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True).stdout.strip()


def test_git_commit_is_the_checkout_dialsum_runs_from():
    if not (ROOT / ".git").exists():
        pytest.skip("dialsum is not running from a git checkout here")
    assert git_commit() == _git("rev-parse", "HEAD", cwd=ROOT)


def test_an_installed_copy_inside_another_checkout_records_no_commit(tmp_path):
    """A non-editable install inside some other repository (a venv in a project checkout) must not record that
    repository's commit. Mutation caught: finding the repository through the file's parents (the old
    `parents[2]`), which lands in the surrounding checkout."""
    other = tmp_path / "other-project"
    other.mkdir()
    _git("init", "-q", cwd=other)
    (other / "README").write_text("not dialsum\n")
    _git("add", "README", cwd=other)
    _git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "x", cwd=other)
    site = other / ".venv" / "lib" / "python3" / "site-packages"
    shutil.copytree(ROOT / "src" / "dialsum", site / "dialsum")
    result = subprocess.run(
        [sys.executable, "-c", "from dialsum.rundir import git_commit; print(git_commit())"],
        env={**os.environ, "PYTHONPATH": str(site)},
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "None"


def test_read_jsonl_keeps_objects_and_numbers_bad_lines(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1}\n\n[1, 2]\n{"step": 2}\n{"step": 3, "lo', encoding="utf-8")
    assert read_jsonl(path) == ([{"step": 1}, {"step": 2}], [3, 5])
    assert read_jsonl(tmp_path / "missing.jsonl") == ([], [])
