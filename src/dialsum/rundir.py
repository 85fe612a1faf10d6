"""The run directory's on-disk contract: the name of every file a run writes, and how to read them back.

train, run, generate and report all go through these names, so a file is renamed in one place.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

CONFIG_FILE = "config.yaml"  # the fully resolved config
ENV_FILE = "env.json"  # versions, device, git commit, command line
METRICS_FILE = "metrics.jsonl"  # one JSON object per logged step (train and eval)
SPIKES_FILE = "grad_norm_spikes.jsonl"  # every step whose grad norm crossed the threshold
SUMMARY_FILE = "summary.json"  # the end-of-run summary
MODEL_DIR = "model"  # final weights or LoRA adapter, plus tokenizer
CHECKPOINT_DIR = "checkpoints"  # Trainer checkpoints, for --resume
DEV_PREDICTIONS_FILE = "dev_predictions.csv"
DEV_SCORES_FILE = "dev_scores.json"
DEV_PER_SAMPLE_FILE = "dev_per_sample.csv"
SUBMISSION_FILE = "submission.csv"
REPORT_FILE = "report.md"
PLOTS_DIR = "plots"
GENERATION_FILE = "generation.json"  # the generation settings used, and the checkpoint's that were ignored
LENGTH_CONTROL_FILE = "length_control.json"  # dev scores with the fitted length rule vs one fixed limit
CLEANUP_FILE = "cleanup.json"  # per split, how many summaries each clean-up step changed


# ---------------------------------------------------------------- reading a run


def read_jsonl(path: str | Path) -> tuple[list[dict], list[int]]:
    """The JSON objects of a JSON-lines file, and the numbers of the lines that are not one (a run killed
    mid-write leaves a half line). A missing file has no rows. Callers decide whether a bad line is fatal."""
    path = Path(path)
    if not path.is_file():
        return [], []
    rows, bad = [], []
    for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            row = None
        if isinstance(row, dict):
            rows.append(row)
        else:
            bad.append(number)
    return rows, bad


@dataclass
class RunData:
    """What one run directory holds, each part empty when its file is missing or unreadable."""

    path: Path
    name: str
    config: dict[str, Any] = field(default_factory=dict)  # flattened: "training.learning_rate" -> 2e-05
    summary: dict[str, Any] = field(default_factory=dict)
    dev_scores: dict[str, Any] = field(default_factory=dict)
    env: dict[str, Any] = field(default_factory=dict)
    metrics: list[dict] = field(default_factory=list)
    spikes: list[dict] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # file names that do not exist
    problems: list[str] = field(default_factory=list)  # files that exist but could not be (fully) read


def flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    """Nested config sections to dotted keys; lists stay values (target_modules is one setting)."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _read_mapping(run: RunData, name: str) -> dict:
    """A JSON object (`.json`) or a YAML mapping (`.yaml`) of the run; missing or unreadable is noted, not fatal.
    Plain YAML rather than load_config: a run from an older schema must still compare."""
    path = run.path / name
    if not path.is_file():
        run.missing.append(name)
        return {}
    kind = "YAML" if name.endswith(".yaml") else "JSON"
    try:
        text = path.read_text(encoding="utf-8")
        data = yaml.safe_load(text) if kind == "YAML" else json.loads(text)
    except (yaml.YAMLError, json.JSONDecodeError, UnicodeDecodeError, OSError) as error:
        run.problems.append(f"{run.path}: {name} is not readable {kind} ({str(error).splitlines()[0]})")
        return {}
    if not isinstance(data, dict):
        run.problems.append(f"{run.path}: {name} is not a {'mapping of sections' if kind == 'YAML' else 'JSON object'}")
        return {}
    return data


def _read_rows(run: RunData, name: str) -> list[dict]:
    """Rows of a JSON-lines file of the run; a bad line is skipped and noted, not fatal."""
    path = run.path / name
    if not path.is_file():
        run.missing.append(name)
        return []
    try:
        rows, bad = read_jsonl(path)
    except OSError as error:
        run.problems.append(f"{run.path}: {name} is not readable ({error})")
        return []
    if bad:
        shown = ", ".join(map(str, bad[:5])) + (", …" if len(bad) > 5 else "")
        run.problems.append(f"{run.path}: {name}: skipped {len(bad)} unreadable line(s) (line {shown})")
    return rows


def load_run(path: str | Path, name: str | None = None) -> RunData:
    """Read every file of a run directory that exists; never raises for missing or corrupt files, so one
    broken run never hides the others in a comparison."""
    path = Path(path)
    run = RunData(path=path, name=name or path.resolve().name)
    if not path.is_dir():
        run.problems.append(f"{path}: not a directory")
        return run
    run.config = flatten(_read_mapping(run, CONFIG_FILE))
    run.summary = _read_mapping(run, SUMMARY_FILE)
    run.dev_scores = _read_mapping(run, DEV_SCORES_FILE)
    run.env = _read_mapping(run, ENV_FILE)
    run.metrics = _read_rows(run, METRICS_FILE)
    run.spikes = _read_rows(run, SPIKES_FILE)
    return run
