"""The Python half of benchmarks/gpu/prepare.sh and check.sh: the wheel manifest, the carry's size, the carried
wheels' requirements, the environment record, and the one results.json.

Standard library (plus `packaging` where present) and dialsum.writer only, so it runs before the carried wheels are
installed, and whether or not they install. Every subcommand prints what it found; see `--help`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import time
import xml.etree.ElementTree as ElementTree
import zipfile
from datetime import datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT / "src"))

from dialsum.writer import OutputPlan, write_json  # noqa: E402  (src/ first: no install needed)

MANIFEST = HERE / "wheels.txt"
IMAGE = HERE / "image-packages.txt"
CARRY_LIMIT = 64 * 2**20  # what travels to the GPU machine: the working tree plus carried paths
NOT_CARRIED = ("torch", "transformers", "accelerate", "peft", "safetensors", "tokenizers", "numpy", "huggingface-hub")
# The environment of the GPU image, for the requirement markers of its wheels (Python 3.12 on x86-64 Linux).
IMAGE_MARKERS = {
    "python_version": "3.12",
    "python_full_version": "3.12.3",
    "sys_platform": "linux",
    "platform_system": "Linux",
    "platform_machine": "x86_64",
    "os_name": "posix",
    "implementation_name": "cpython",
    "platform_python_implementation": "CPython",
    "extra": "",
}
# Which claim each check stands for (the list); results.json reports them in this order.
CLAIMS = [
    ("fp32 master weights under CUDA bf16 autocast", "test_preset_full_fine_tuning_keeps_fp32_master_weights"),
    ("packed rows on sdpa with CUDA kernels", "test_packed_rows_equal_padded_batch_on_cuda_sdpa"),
    ("QLoRA with bitsandbytes", "test_qlora_trains_and_predicts"),
    ("FSDP's full-state-dict save (single process)", "test_fsdp_single_process_run_saves_a_model_that_reloads"),
    ("greedy predict on CUDA equals CPU", "test_greedy_predict_on_cuda_equals_cpu"),
    ("gpu_step.py runs the 3B architecture against plan", "test_gpu_step_measures_the_3b_architecture"),
    ("gpu_step.py: memory vs plan, checkpointing (preset)", "step:gpu_step_checkpointing"),
    ("gpu_step.py: MFU, no checkpointing", "step:gpu_step"),
]


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


# ---------------------------------------------------------------- the manifest


def manifest() -> list[dict]:
    """wheels.txt as rows: kind, name, version (None for left-out), why."""
    rows = []
    for number, line in enumerate(MANIFEST.read_text(encoding="utf-8").splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split(None, 2)
        if len(parts) < 3 or parts[0] not in ("required", "optional", "left-out"):
            raise SystemExit(f"{MANIFEST}:{number}: expected 'required|optional|left-out NAME[==VERSION] why'")
        kind, spec, why = parts
        name, _, version = spec.partition("==")
        if kind != "left-out" and not version:
            raise SystemExit(f"{MANIFEST}:{number}: {spec}: pin an exact version (NAME==VERSION)")
        rows.append({"kind": kind, "name": name, "version": version or None, "why": why})
    return rows


def image_packages() -> dict[str, str | None]:
    """The image's packages: canonical name -> version where known, else None."""
    packages = {}
    for line in IMAGE.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            packages[canonical(name)] = version or None
    return packages


def wheel_metadata(path: Path) -> dict:
    """Name, version and Requires-Dist lines of one wheel."""
    with zipfile.ZipFile(path) as archive:
        meta = next(n for n in archive.namelist() if n.count("/") == 1 and n.endswith(".dist-info/METADATA"))
        text = archive.read(meta).decode("utf-8")
    headers = {"Name": None, "Version": None}
    requires = []
    for line in text.split("\n\n", 1)[0].splitlines():
        key, _, value = line.partition(": ")
        if key in headers:
            headers[key] = value.strip()
        elif key == "Requires-Dist":
            requires.append(value.strip())
    return {"name": headers["Name"], "version": headers["Version"], "requires": requires, "file": path.name}


def carried_wheels(directory: Path) -> list[dict]:
    return [wheel_metadata(p) for p in sorted(directory.glob("*.whl"))]


# ---------------------------------------------------------------- requirements


def _requirement(text: str):
    try:
        from packaging.requirements import Requirement
    except ImportError:  # no packaging: names only
        return None
    return Requirement(text)


def check_requirements(wheels: list[dict], installed: bool) -> list[dict]:
    """Each carried wheel's Requires-Dist (markers evaluated for the image) against the other carried wheels and the
    image's packages (`installed=False`, here), or against what this Python can import (`installed=True`, there)."""
    from importlib import metadata

    carried = {canonical(w["name"]): w["version"] for w in wheels}
    image = image_packages()
    findings = []
    for wheel in wheels:
        for text in wheel["requires"]:
            requirement = _requirement(text)
            name = canonical(requirement.name if requirement else re.split(r"[\s;<>=!~\[(]", text, 1)[0])
            if requirement is not None and requirement.marker is not None:
                if not requirement.marker.evaluate(IMAGE_MARKERS):
                    continue
            elif "extra ==" in text:
                continue
            if installed:
                try:
                    found, source = metadata.version(name), "installed"
                except metadata.PackageNotFoundError:
                    found, source = None, None
            elif name in carried:
                found, source = carried[name], "carried"
            elif name in image:
                found, source = image[name] or "?", "image"
            else:
                found, source = None, None
            if found is None:
                status = "missing"
            elif requirement is None or not str(requirement.specifier):
                status = "ok"
            elif found == "?":
                status = "unknown-version"
            else:
                status = "ok" if requirement.specifier.contains(found, prereleases=True) else "version"
            findings.append(
                {"wheel": wheel["name"], "requires": text, "status": status, "found": found, "source": source}
            )
    return findings


def print_findings(findings: list[dict]) -> int:
    """Print every problem; returns how many requirements are missing or of the wrong version."""
    bad = [f for f in findings if f["status"] in ("missing", "version")]
    for f in findings:
        if f["status"] == "missing":
            print(f"  MISSING  {f['wheel']} needs {f['requires']}: neither carried nor on the image")
        elif f["status"] == "version":
            print(f"  VERSION  {f['wheel']} needs {f['requires']}: {f['source']} has {f['found']}")
        elif f["status"] == "unknown-version":
            print(f"  note     {f['wheel']} needs {f['requires']}: on the image, version not known here")
    print(f"requirements: {len(findings)} checked, {len(bad)} unmet")
    return len(bad)


# ---------------------------------------------------------------- subcommands


def cmd_manifest(args) -> int:
    for row in manifest():
        if row["kind"] == args.kind:
            print(f"{row['name']}=={row['version']}" if row["version"] else f"{row['name']}\t{row['why']}")
    return 0


def travelling_files() -> list[Path]:
    """Tracked files and untracked ones git does not ignore: the working tree that travels."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    return [ROOT / os.fsdecode(p) for p in listed if p]


def cmd_size(args) -> int:
    tree = sum(p.stat().st_size for p in travelling_files() if p.is_file())
    wheels = sum(p.stat().st_size for p in Path(args.wheels).glob("*.whl")) if Path(args.wheels).is_dir() else 0
    total = tree + wheels
    print(
        json.dumps({"tree_bytes": tree, "wheels_bytes": wheels, "total_bytes": total, "limit_bytes": CARRY_LIMIT})
        if args.json
        else f"carry: working tree {tree / 2**20:.2f} MiB + {args.wheels}/ {wheels / 2**20:.2f} MiB = "
        f"{total / 2**20:.2f} MiB of {CARRY_LIMIT / 2**20:.0f} MiB"
    )
    return 0 if total <= CARRY_LIMIT else 1


def cmd_requirements(args) -> int:
    wheels = carried_wheels(Path(args.wheels))
    pinned = {canonical(r["name"]): r["version"] for r in manifest() if r["version"]}
    problems = 0
    for wheel in wheels:
        if pinned.get(canonical(wheel["name"])) != wheel["version"]:
            print(f"  EXTRA    {wheel['file']}: not pinned in {MANIFEST.name}")
            problems += 1
    names = [canonical(w["name"]) for w in wheels]
    for name in sorted({n for n in names if names.count(n) > 1}):
        print(f"  TWICE    {name}: two wheels of one package stop the whole install")
        problems += 1
    for wheel in wheels:
        if canonical(wheel["name"]) in NOT_CARRIED:
            print(f"  SHADOW   {wheel['file']}: would replace the image's {wheel['name']}")
            problems += 1
    problems += print_findings(check_requirements(wheels, installed=False))
    return 1 if problems else 0


def _import_check(modules: list[str]) -> dict[str, dict]:
    """Import each module in this process; where it came from, or the error."""
    import importlib

    found = {}
    for name in modules:
        try:
            module = importlib.import_module(name)
            found[name] = {"ok": True, "file": getattr(module, "__file__", None)}
        except Exception as error:  # noqa: BLE001 - any failure is the finding
            found[name] = {"ok": False, "error": f"{type(error).__name__}: {str(error).splitlines()[0][:300]}"}
    return found


def cmd_install(args) -> int:
    """pip install the carried wheels into --target (no index, no deps), then check their requirements against what
    is really there, and that torch/transformers/... still come from the image."""
    wheels = sorted(Path(args.wheels).glob("*.whl"))
    figures: dict = {"wheels": [w.name for w in wheels], "target": args.target}
    rc = 0
    if not wheels:
        print(f"no wheels in {args.wheels}/: run benchmarks/gpu/prepare.sh where pip works, and carry {args.wheels}")
        figures["error"] = "no wheels"
        rc = 1
    else:
        command = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile"]
        command += ["--no-cache-dir", "--upgrade", "--target", args.target]
        print("$ " + " ".join(command + [w.name for w in wheels]))
        started = time.perf_counter()
        result = subprocess.run(command + [str(w) for w in wheels])
        figures["pip_rc"] = rc = result.returncode
        if rc:  # pip installs all or nothing: install one by one, so one bad wheel costs only its own claims
            print("pip refused the set; installing the wheels one at a time")
            failed = [w.name for w in wheels if subprocess.run(command + [str(w)]).returncode]
            figures["failed_wheels"] = failed
            print("not installed: " + (", ".join(failed) or "none"))
        figures["pip_seconds"] = round(time.perf_counter() - started, 1)
        sys.path.insert(0, args.target)
        findings = check_requirements(carried_wheels(Path(args.wheels)), installed=True)
        figures["unmet"] = [f for f in findings if f["status"] != "ok"]
        print_findings(findings)  # recorded, not fatal: a floor a wheel states may be stricter than it needs
        target = Path(args.target)
        shadowing = [p.name for p in target.glob("*.dist-info") if canonical(p.name.split("-")[0]) in NOT_CARRIED]
        figures["shadowing"] = shadowing
        if shadowing:
            print(f"the target replaces the image's packages: {', '.join(shadowing)}")
            rc = rc or 1
    if args.figures:
        write_json(args.figures, figures)
    return rc


def _versions(names: list[str]) -> dict[str, str | None]:
    from importlib import metadata

    versions = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def cmd_env(args) -> int:
    """Python, torch, the GPU, package versions, and whether dialsum's modules import: the machine the figures
    come from. Fails when a module dialsum needs does not import."""
    record: dict = {"python": platform.python_version(), "executable": sys.executable, "platform": platform.platform()}
    record["cpus"] = os.cpu_count()
    record["versions"] = _versions(
        [
            "torch",
            "transformers",
            "accelerate",
            "peft",
            "trl",
            "datasets",
            "pydantic",
            "bitsandbytes",
            "safetensors",
            "tokenizers",
            "huggingface-hub",
            "numpy",
            "pyarrow",
            "fsspec",
            "typing-extensions",
            "triton",
            "pytest",
            "pytest-timeout",
        ]
    )
    required = ["torch", "transformers", "trl", "datasets", "pydantic", "dialsum.train", "dialsum.predict"]
    required += ["dialsum.cli", "dialsum.plan"]
    record["imports"] = _import_check(required + ["bitsandbytes"])
    try:
        import torch

        record["torch_cuda"] = torch.version.cuda
        record["cuda_available"] = torch.cuda.is_available()
        if torch.cuda.is_available():
            properties = torch.cuda.get_device_properties(0)
            record["gpu"] = {
                "name": properties.name,
                "memory_gib": round(properties.total_memory / 2**30, 1),
                "capability": f"{properties.major}.{properties.minor}",
                "multiprocessors": properties.multi_processor_count,
                "bf16": torch.cuda.is_bf16_supported(),
                "count": torch.cuda.device_count(),
            }
    except Exception as error:  # noqa: BLE001
        record["torch_error"] = str(error)
    try:
        smi = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        record["nvidia_smi"] = smi.stdout.strip() or smi.stderr.strip()
    except (OSError, subprocess.TimeoutExpired) as error:
        record["nvidia_smi"] = f"not available ({type(error).__name__})"
    failed = [name for name in required if not record["imports"][name]["ok"]]
    record["failed_imports"] = failed
    print(json.dumps(record, indent=2, ensure_ascii=False))
    if args.figures:
        write_json(args.figures, record)
    return 1 if failed else 0


def cmd_claim(args) -> int:
    from dialsum.errors import DialsumError

    try:
        OutputPlan([], args.overwrite).directory(args.out, "RESULTS_DIR")
    except DialsumError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


def cmd_record(args) -> int:
    """Append one step's outcome to the steps file (check.sh calls this after every step)."""
    from dialsum.writer import append_line

    step = {
        "name": args.name,
        "status": args.status,
        "rc": args.rc,
        "seconds": args.seconds,
        "limit_s": args.limit,
        "reason": args.reason,
        "command": args.command,
    }
    append_line(args.steps, json.dumps(step, ensure_ascii=False))
    return 0


# ---------------------------------------------------------------- results.json


def pytest_outcomes(work: Path, log: str) -> list[dict]:
    """Each test's outcome: from the JUnit XML when pytest finished, else from the -v lines of its log."""
    junit = work / "junit.xml"
    tests = []
    if junit.is_file():
        try:
            for case in ElementTree.parse(junit).getroot().iter("testcase"):
                outcome, message = "passed", None
                for tag in ("failure", "error", "skipped"):
                    child = case.find(tag)
                    if child is not None:
                        outcome = {"failure": "failed", "error": "error", "skipped": "skipped"}[tag]
                        message = (child.get("message") or child.text or "").strip()[:2000]
                tests.append(
                    {
                        "test": case.get("name"),
                        "outcome": outcome,
                        "seconds": float(case.get("time", 0)),
                        "message": message,
                    }
                )
            return tests
        except ElementTree.ParseError:
            pass
    for match in re.finditer(r"::(test_\w+)(?:\[[^\]]*\])? (PASSED|FAILED|SKIPPED|ERROR|XFAIL|XPASS)", log):
        tests.append({"test": match.group(1), "outcome": match.group(2).lower(), "seconds": None, "message": None})
    return tests


def test_figures(work: Path) -> dict[str, list[dict]]:
    figures: dict[str, list[dict]] = {}
    path = work / "figures.jsonl"
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by a kill
            figures.setdefault(row.pop("test", "?"), []).append(row)
    return figures


GPU_STEP_KEYS = (
    "device",
    "tokens_per_second",
    "mfu",
    "mfu_model",
    "achieved_tflops",
    "matmul_tflops_measured",
    "step_seconds_median",
    "real_tokens_per_step",
    "rows",
    "row_length",
    "checkpointing",
    "precision",
    "weights_dtype",
    "autocast",
    "targets",
    "error",
)


def step_figures(step: dict, work: Path, log: str) -> dict:
    name = step["name"]
    if name == "pytest":
        tests = pytest_outcomes(work, log)
        figures = test_figures(work)
        for test in tests:
            test["figures"] = figures.get(test["test"], [])
        return {"tests": tests}
    if name.startswith("gpu_step"):
        path = work / f"{name}.json"
        if not path.is_file():
            return {}
        record = json.loads(path.read_text(encoding="utf-8"))
        figures = {k: record.get(k) for k in GPU_STEP_KEYS if k in record}
        memory = record.get("memory") or {}
        figures["memory"] = {
            k: memory.get(k)
            for k in ("ratio", "measured_peak_gb", "reserved_peak_gb", "estimate_gb", "estimate_parts_gb")
        }
        return figures
    path = work / f"{name}.figures.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def step_status(step: dict, figures: dict) -> str:
    """passed / failed / timeout / skipped; a pytest run whose tests all skipped is 'skipped', not 'passed'."""
    if step["status"] != "ran":
        return step["status"]
    if step["rc"] in (124, 137):
        return "timeout"
    if step["name"] == "pytest":
        outcomes = [t["outcome"] for t in figures.get("tests", [])]
        if step["rc"] == 0 and outcomes and all(o == "skipped" for o in outcomes):
            return "skipped"
        return "passed" if step["rc"] == 0 and outcomes else "failed"
    return "passed" if step["rc"] == 0 else "failed"


def claims(steps: list[dict]) -> list[dict]:
    tests = {t["test"]: t for s in steps if s["name"] == "pytest" for t in s["figures"].get("tests", [])}
    by_name = {s["name"]: s for s in steps}
    rows = []
    for claim, key in CLAIMS:
        if key.startswith("step:"):
            step = by_name.get(key[5:])
            status = step["status"] if step else "not run"
            targets = (step or {}).get("figures", {}).get("targets")
            rows.append({"claim": claim, "check": key, "status": status, "targets": targets})
        else:
            test = next((t for name, t in tests.items() if name.startswith(key)), None)
            rows.append(
                {
                    "claim": claim,
                    "check": key,
                    "status": test["outcome"] if test else "not run",
                    "message": (test or {}).get("message"),
                }
            )
    vllm = next((r for r in manifest() if r["name"] == "vllm"), None)
    rows.append({"claim": "the vLLM backend", "check": None, "status": "not checked", "message": vllm and vllm["why"]})
    return rows


def cmd_collect(args) -> int:
    """Fold the steps, their logs and figures into OUT/results.json; copy the combined log and the JUnit XML."""
    work, out = Path(args.work), Path(args.out)
    steps = []
    steps_file = work / "steps.jsonl"
    lines = steps_file.read_text(encoding="utf-8").splitlines() if steps_file.is_file() else []
    for line in lines:
        step = json.loads(line)
        log_path = work / f"{step['name']}.log"
        log = log_path.read_text(encoding="utf-8", errors="replace") if log_path.is_file() else ""
        step["figures"] = step_figures(step, work, log)
        step["status"] = step_status(step, step["figures"])
        step["log_tail"] = log[-1500:] if step["status"] in ("failed", "timeout") else None
        steps.append(step)
    counts: dict[str, int] = {}
    for step in steps:
        counts[step["status"]] = counts.get(step["status"], 0) + 1
    environment = {}
    if (work / "environment.figures.json").is_file():
        env = json.loads((work / "environment.figures.json").read_text(encoding="utf-8"))
        environment = {k: env.get(k) for k in ("python", "gpu", "torch_cuda", "nvidia_smi", "versions", "cpus")}
    results = {
        "check": "dialsum GPU check (benchmarks/gpu/check.sh)",
        "dry_run": args.dry_run,
        "started": args.started,
        "written": datetime.now().isoformat(timespec="seconds"),
        "seconds": round(time.time() - float(args.started_epoch), 1) if args.started_epoch else None,
        "finished": args.finished,
        "git_commit": _git_commit(),
        "environment": environment,
        "counts": counts,
        "claims": claims(steps),
        "steps": steps,
    }
    write_json(out / "results.json", results)
    for name in ("check.log", "junit.xml"):
        if (work / name).is_file():
            from dialsum.writer import write_bytes

            write_bytes(out / name, (work / name).read_bytes())
    if args.finished:
        print_summary(results)
        return 1 if counts.get("failed") or counts.get("timeout") else 0
    return 0


def _git_commit() -> str | None:
    try:
        result = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10)
        return result.stdout.strip() or None
    except (OSError, subprocess.TimeoutExpired):
        return None


def print_summary(results: dict) -> None:
    print("\nstep                        status    rc     seconds  note")
    for step in results["steps"]:
        note = step.get("reason") or ""
        if step["name"] == "pytest":
            tests = step["figures"].get("tests", [])
            outcomes = [t["outcome"] for t in tests]
            note = ", ".join(f"{outcomes.count(o)} {o}" for o in dict.fromkeys(outcomes)) or note
        elif step["name"].startswith("gpu_step") and step["figures"].get("mfu") is not None:
            f = step["figures"]
            note = f"{f['tokens_per_second']:,.0f} tokens/s, MFU {f['mfu']:.1%}, memory/plan {f['memory']['ratio']}"
        elif step["status"] in ("failed", "timeout") and step.get("log_tail"):
            lines = [line for line in step["log_tail"].splitlines() if line.strip()]
            note = lines[-1][:90] if lines else note
        rc = "" if step["rc"] is None else str(step["rc"])
        print(f"{step['name']:<27} {step['status']:<9} {rc:<6} {step['seconds'] or 0:>7.1f}  {note}")
    print("\nclaim                                                 outcome")
    for row in results["claims"]:
        print(f"{row['claim']:<53} {row['status']}")
    print(f"\nresults: {', '.join(f'{n} {s}' for s, n in results['counts'].items())}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("manifest", help="print wheels.txt's pins of one kind")
    p.add_argument("--kind", choices=["required", "optional", "left-out"], default="required")
    p.set_defaults(run=cmd_manifest)
    p = sub.add_parser("size", help="the size of what travels: the working tree plus the wheels")
    p.add_argument("--wheels", default=".whl")
    p.add_argument("--json", action="store_true")
    p.set_defaults(run=cmd_size)
    p = sub.add_parser("requirements", help="check the carried wheels' Requires-Dist against each other and the image")
    p.add_argument("--wheels", default=".whl")
    p.set_defaults(run=cmd_requirements)
    p = sub.add_parser("install", help="install the carried wheels into a target and check them (GPU machine)")
    p.add_argument("--wheels", default=".whl")
    p.add_argument("--target", required=True)
    p.add_argument("--figures")
    p.set_defaults(run=cmd_install)
    p = sub.add_parser("env", help="record the environment and check that dialsum's modules import")
    p.add_argument("--figures")
    p.set_defaults(run=cmd_env)
    p = sub.add_parser("claim", help="claim the results directory before anything runs")
    p.add_argument("--out", required=True)
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(run=cmd_claim)
    p = sub.add_parser("record", help="append one step's outcome to the steps file")
    p.add_argument("--steps", required=True)
    p.add_argument("--name", required=True)
    p.add_argument("--status", choices=["ran", "skipped"], required=True)
    p.add_argument("--rc", type=int)
    p.add_argument("--seconds", type=float)
    p.add_argument("--limit", type=int)
    p.add_argument("--reason")
    p.add_argument("--command")
    p.set_defaults(run=cmd_record)
    p = sub.add_parser("collect", help="write OUT/results.json from the steps so far")
    p.add_argument("--work", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--dry-run", action="store_true")
    p.add_argument("--finished", action="store_true")
    p.add_argument("--started", default=None)
    p.add_argument("--started-epoch", default=None)
    p.set_defaults(run=cmd_collect)
    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
