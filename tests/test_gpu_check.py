"""The GPU check's plumbing, on a machine without a GPU: benchmarks/gpu/check.sh (its --dry-run end to end, a failing
step that does not stop the later ones, the time budget, the results folder) and gpucheck.py's wheel manifest and
requirement check. The GPU claims themselves are tests/test_gpu.py."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from conftest import ROOT

CHECK = ROOT / "benchmarks" / "gpu" / "check.sh"
STEPS = ["wheels", "environment", "pytest", "gpu_step_checkpointing", "gpu_step"]
GPU_TESTS = 6  # tests/test_gpu.py


@pytest.fixture(scope="module")
def gpucheck():
    sys.path.insert(0, str(ROOT / "benchmarks" / "gpu"))
    try:
        import gpucheck

        yield gpucheck
    finally:
        sys.path.remove(str(ROOT / "benchmarks" / "gpu"))


def check(*args: str, env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    environment = {**os.environ, "PYTHON": sys.executable, **(env or {})}
    environment.pop("DIALSUM_GPU_FIGURES", None)
    return subprocess.run(
        ["bash", str(CHECK), *args], capture_output=True, text=True, env=environment, timeout=timeout, cwd=ROOT
    )


def results(out: Path) -> dict:
    return json.loads((out / "results.json").read_text(encoding="utf-8"))


def assert_returnable(out: Path) -> None:
    """What the GPU machine can send back: at most 8 files, flat, names of letters, digits, '.', '_', '-'."""
    files = list(out.iterdir())
    assert sorted(p.name for p in files) == ["check.log", "junit.xml", "results.json"] or len(files) <= 8
    assert all(p.is_file() and re.fullmatch(r"[A-Za-z0-9._-]+", p.name) for p in files), files


@pytest.mark.slow
def test_dry_run_runs_end_to_end_and_says_every_gpu_step_skipped(tmp_path):
    """The plumbing CI can test: every step runs or says why not; the tests skip for want of CUDA (hidden even on a
    GPU machine); gpu_step's tiny CPU variant runs so its figures are parsed; one results.json holds it all."""
    out = tmp_path / "results"
    result = check("--dry-run", str(out))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert_returnable(out)
    assert sorted(p.name for p in out.iterdir()) == ["check.log", "junit.xml", "results.json"]
    data = results(out)
    assert data["dry_run"] and data["finished"]
    steps = {s["name"]: s for s in data["steps"]}
    assert list(steps) == STEPS
    assert steps["wheels"]["status"] == "skipped" and "dry run" in steps["wheels"]["reason"]
    assert steps["environment"]["status"] == "passed"
    assert steps["environment"]["figures"]["cuda_available"] is False
    assert not steps["environment"]["figures"]["failed_imports"]
    tests = steps["pytest"]["figures"]["tests"]
    assert steps["pytest"]["status"] == "skipped" and steps["pytest"]["rc"] == 0
    assert len(tests) == GPU_TESTS and all(t["outcome"] == "skipped" and "CUDA" in t["message"] for t in tests)
    for name in ("gpu_step_checkpointing", "gpu_step"):
        step = steps[name]
        assert step["status"] == "skipped" and "dry run" in step["reason"] and step["rc"] == 0
        assert step["figures"]["tokens_per_second"] > 0 and step["figures"]["device"] == "cpu"
        assert step["figures"]["memory"]["estimate_gb"] > 0 and step["figures"]["memory"]["ratio"] is None
    assert steps["gpu_step_checkpointing"]["figures"]["checkpointing"] is True
    assert steps["gpu_step"]["figures"]["checkpointing"] is False
    assert all(s["seconds"] is not None and s["limit_s"] for s in data["steps"] if s["name"] != "wheels")
    claims = {c["claim"]: c["status"] for c in data["claims"]}
    assert set(claims.values()) == {"skipped", "not checked"} and claims["the vLLM backend"] == "not checked"
    log = (out / "check.log").read_text(encoding="utf-8")
    assert all(f"=== {name}" in log for name in STEPS)
    assert "wheels" in result.stdout and "claim" in result.stdout  # the summary table


@pytest.mark.slow
def test_a_failing_step_does_not_stop_the_later_ones(tmp_path):
    """Without --dry-run on this CPU machine: no wheels to install (failed), the tests skip, gpu_step refuses to run
    without CUDA (failed); every step still ran, each with its own rc, and the exit code says something failed."""
    out = tmp_path / "results"
    empty = tmp_path / "no-wheels"
    empty.mkdir()
    result = check(str(out), env={"DIALSUM_GPU_WHEELS": str(empty)})
    assert result.returncode == 1, result.stdout[-3000:]
    steps = {s["name"]: s for s in results(out)["steps"]}
    assert list(steps) == STEPS
    assert (steps["wheels"]["status"], steps["wheels"]["figures"]["error"]) == ("failed", "no wheels")
    assert steps["environment"]["status"] == "passed"
    assert steps["pytest"]["status"] == "skipped"
    for name in ("gpu_step_checkpointing", "gpu_step"):
        assert (steps[name]["status"], steps[name]["rc"]) == ("failed", 1)
        assert "needs a CUDA GPU" in steps[name]["log_tail"]
    assert results(out)["counts"] == {"failed": 3, "passed": 1, "skipped": 1}


def test_steps_left_without_time_are_skipped_and_said_so(tmp_path):
    """Each step runs under min(its limit, what is left of --budget); one with under 30 s left is skipped with the
    reason, and results.json is still written."""
    out = tmp_path / "results"
    result = check("--dry-run", "--budget", "44", str(out), timeout=120)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    steps = results(out)["steps"]
    assert [s["name"] for s in steps] == STEPS
    assert steps[0]["reason"].startswith("dry run")
    assert all(s["status"] == "skipped" and s["reason"] == "no time left in the 44 s budget" for s in steps[1:])


def test_a_results_folder_in_use_is_refused_before_anything_runs(tmp_path):
    out = tmp_path / "results"
    out.mkdir()
    (out / "results.json").write_text("{}")
    result = check("--dry-run", str(out), timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "--overwrite" in result.stderr, result.stderr
    assert (out / "results.json").read_text() == "{}"
    assert check("--nonsense", timeout=60).returncode == 2


# ---------------------------------------------------------------- the wheels


def test_the_manifest_pins_what_the_image_lacks_and_replaces_nothing_it_needs(gpucheck):
    rows = gpucheck.manifest()
    carried = [r for r in rows if r["kind"] != "left-out"]
    assert all(re.fullmatch(r"\d+(\.\d+)+", r["version"]) for r in carried)
    names = {gpucheck.canonical(r["name"]) for r in carried}
    assert {"trl", "datasets", "pydantic", "pydantic-core"} <= names
    assert not names & set(gpucheck.NOT_CARRIED)
    image = gpucheck.image_packages()
    assert image["torch"] == "2.11.0" and image["transformers"] == "5.17.0"
    assert not (names - {"typing-extensions"}) & set(image), "carry only what the image lacks"
    left_out = {r["name"] for r in rows if r["kind"] == "left-out"}
    assert {"vllm", "kiwipiepy"} <= left_out


def make_wheel(directory: Path, name: str, version: str, requires: list[str]) -> Path:
    path = directory / f"{name.replace('-', '_')}-{version}-py3-none-any.whl"
    metadata = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
    metadata += "".join(f"Requires-Dist: {r}\n" for r in requires) + "\nA description.\nRequires-Dist: not-a-header\n"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(f"{name.replace('-', '_')}-{version}.dist-info/METADATA", metadata)
    return path


def test_requirements_are_checked_against_the_carried_wheels_and_the_image(gpucheck, tmp_path):
    """A requirement is met by another carried wheel or by the image (its known version); markers are evaluated for
    the image's Python 3.12 on x86-64 Linux, extras are left out."""
    make_wheel(tmp_path, "alpha", "1.0", ["beta>=2", "transformers>=5.20", "numpy>=1.17"])
    make_wheel(tmp_path, "beta", "2.1", ["gamma", "tomli; python_version < '3.11'", "pytest; extra == 'test'"])
    findings = gpucheck.check_requirements(gpucheck.carried_wheels(tmp_path), installed=False)
    status = {(f["wheel"], f["requires"].split(";")[0].strip()): f["status"] for f in findings}
    assert status == {
        ("alpha", "beta>=2"): "ok",
        ("alpha", "transformers>=5.20"): "version",  # the image has 5.17
        ("alpha", "numpy>=1.17"): "ok",
        ("beta", "gamma"): "missing",
    }
    assert gpucheck.print_findings(findings) == 2


def test_the_carried_wheels_are_checked_for_pins_duplicates_and_shadowing(gpucheck, tmp_path, capsys):
    make_wheel(tmp_path, "torch", "2.13.0", [])
    make_wheel(tmp_path, "trl", "1.16.0", [])
    make_wheel(tmp_path, "trl", "1.15.0", [])
    code = gpucheck.main(["requirements", "--wheels", str(tmp_path)])
    printed = capsys.readouterr().out
    assert code == 1
    assert "SHADOW   torch-2.13.0" in printed and "TWICE    trl" in printed
    assert "EXTRA    torch-2.13.0" in printed and "EXTRA    trl-1.15.0" in printed
    assert "EXTRA    trl-1.16.0" not in printed


def test_the_carry_size_counts_the_tree_that_travels_and_the_wheels(gpucheck, tmp_path, capsys):
    (tmp_path / "big.whl").write_bytes(b"0" * 2**20)
    assert gpucheck.main(["size", "--wheels", str(tmp_path), "--json"]) == 0
    size = json.loads(capsys.readouterr().out)
    assert size["wheels_bytes"] == 2**20 and size["limit_bytes"] == 64 * 2**20
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True).stdout.split()
    assert size["tree_bytes"] >= sum((ROOT / p).stat().st_size for p in tracked if (ROOT / p).is_file())
    (tmp_path / "huge.whl").write_bytes(b"0" * (64 * 2**20))
    assert gpucheck.main(["size", "--wheels", str(tmp_path)]) == 1
