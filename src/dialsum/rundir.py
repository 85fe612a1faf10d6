"""The run directory's on-disk contract: the name of every file a run writes, how a run directory is chosen,
started, reused after a failed start and resumed, and how its files are read back.

train, run, generate and report all go through here, so a file is renamed in one place. Nothing here imports
torch at module level: reading runs (`dialsum compare`) stays quick.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from dialsum.errors import RunDirError
from dialsum.writer import OutputPlan, write_json, write_text

CONFIG_FILE = "config.yaml"  # the fully resolved config
ENV_FILE = "env.json"  # versions, device, git commit, command line
METRICS_FILE = "metrics.jsonl"  # one JSON object per logged step (train and eval)
SPIKES_FILE = "grad_norm_spikes.jsonl"  # every step whose grad norm crossed the threshold
SUMMARY_FILE = "summary.json"  # the end-of-run summary
MODEL_DIR = "model"  # final weights or LoRA adapter, plus tokenizer
MODEL_STAGING_DIR = ".model.partial"  # model/ is written here and renamed when complete (a kill leaves no half model)
CHECKPOINT_DIR = "checkpoints"  # Trainer checkpoints, for --resume
DEV_PREDICTIONS_FILE = "dev_predictions.csv"
DEV_SCORES_FILE = "dev_scores.json"
DEV_PER_SAMPLE_FILE = "dev_per_sample.csv"
SUBMISSION_FILE = "submission.csv"
REPORT_FILE = "report.md"
REPORT_HTML_FILE = "report.html"  # the error-analysis page: every dev dialogue, sortable and filterable
PLOTS_DIR = "plots"
GENERATION_FILE = "generation.json"  # the generation settings used, and the checkpoint's that were ignored
LENGTH_CONTROL_FILE = "length_control.json"  # dev scores with the fitted length rule vs one fixed limit
CLEANUP_FILE = "cleanup.json"  # per split, how many summaries each clean-up step changed
TENSORBOARD_DIR = "tensorboard"  # logging.report_to=[tensorboard]: the event files
WANDB_PARENT = "."  # logging.report_to=[wandb]: W&B writes its wandb/ folder here, in the run directory
TRAINER_STATE_FILE = "trainer_state.json"  # inside each checkpoint-N/ (written by the HF Trainer)

# A kfold parent (`dialsum kfold`): the split, the fold data, one run directory per fold, the joint results.
KFOLD_FILE = "kfold.json"  # the split (K, seed, assignment) and the fold run directories
KFOLD_DATA_DIR = "data"  # fold-I-train / fold-I-heldout files: the original rows, verbatim
OOF_PREDICTIONS_FILE = "oof_predictions.csv"  # in a fold: its held-out rows; in the parent: every training row
OOF_SCORES_FILE = "oof_scores.json"
KFOLD_SCORES_FILE = "kfold_scores.json"
KFOLD_REPORT_FILE = "kfold.md"
KFOLD_ENSEMBLE_DEV = "ensemble_dev.csv"  # the folds' MBR consensus on dev (K >= 3)
KFOLD_ENSEMBLE_TEST = "ensemble_test.csv"  # ... on test, fname,summary
KFOLD_SUBMISSION = SUBMISSION_FILE  # ... on test, in the organizers' format

# `dialsum compare`: written into its --output directory.
COMPARE_REPORT_FILE = "compare.md"
COMPARE_JSON_FILE = "compare.json"
COMPARE_HTML_FILE = "compare.html"  # the same dialogues side by side for 2-4 runs

# `dialsum augment --output DIR/aug.csv`: beside the output, the answer cache (shared by every augment output in DIR:
# an answer is paid once whichever output asks), the rejected answers and the job's summary.
AUGMENT_CACHE_FILE = "augment_cache.sqlite"
AUGMENT_REJECTS_SUFFIX = ".rejects.jsonl"  # aug.csv -> aug.rejects.jsonl: every rejected answer, raw, with its reason
AUGMENT_SUMMARY_SUFFIX = ".augment.json"  # aug.csv -> aug.augment.json: counts, tokens, cost, endpoint, sampling


def augment_files(output: Path) -> tuple[Path, Path, Path]:
    """The cache, rejects and summary files of an augment output."""
    output = Path(output)
    return (
        output.parent / AUGMENT_CACHE_FILE,
        output.with_name(output.stem + AUGMENT_REJECTS_SUFFIX),
        output.with_name(output.stem + AUGMENT_SUMMARY_SUFFIX),
    )


# `dialsum export`: written into its --output directory, beside the HF files (config.json, *.safetensors, tokenizer,
# generation_config.json; adapter_config.json + adapter_model.safetensors with --no-merge).
MODEL_CARD_FILE = "README.md"  # the Hub model card: YAML metadata, prompt, decoding, dev scores, usage
EXPORT_CONFIG_FILE = "dialsum.yaml"  # the run's config, model pointing at the export: `dialsum serve/predict EXPORT`
EXPORT_PARITY_FILE = "parity.json"  # the parity check: dialogues, max logit difference, tolerance


# `dialsum tune`: RUN_DIR/tune/ (or its --output-dir) holds the study and its reports.
TUNE_DIR = "tune"
TUNE_STUDY_FILE = "study.db"  # Optuna's SQLite storage (the default --storage): trials, split, cache
TUNE_TRIALS_FILE = "trials.csv"  # one row per trial: settings, tuning score, held-out score (best), seconds, state
TUNE_BEST_FILE = "best.yaml"  # the winning settings as a config fragment for predict --config / dialsum run
TUNE_REPORT_FILE = "tune.md"
TUNE_SPLIT_FILE = "split.csv"  # fname,half: which dev rows were tuned on and which were held out
TUNE_HISTORY_PLOT = "tune_history.png"
TUNE_PARAMS_PLOT = "tune_params.png"
TUNE_OUTPUTS = (
    TUNE_TRIALS_FILE,
    TUNE_BEST_FILE,
    TUNE_REPORT_FILE,
    TUNE_SPLIT_FILE,
    TUNE_HISTORY_PLOT,
    TUNE_PARAMS_PLOT,
)

# The prediction file of each split a run directory (or kfold parent) holds, for `dialsum ensemble --split`.
SPLIT_FILES = {"dev": DEV_PREDICTIONS_FILE, "test": SUBMISSION_FILE, "oof": OOF_PREDICTIONS_FILE}


def fold_data_file(parent: Path, fold: int, part: str, suffix: str) -> Path:
    """kfold: the rows fold `fold` trains on (`part` 'train') or holds out ('heldout')."""
    return parent / KFOLD_DATA_DIR / f"fold-{fold}-{part}{suffix}"


def fold_dir_name(fold: int) -> str:
    return f"fold-{fold}"


# ---------------------------------------------------------------- writing a run


def default_run_dir(config, config_path: str | Path | None) -> Path:
    name = Path(config_path).stem if config_path else "run"
    return Path(config.logging.output_root) / f"{name}-{datetime.now():%Y%m%d-%H%M%S}"


# What a start writes before its first checkpoint: a directory holding only these is a failed start, safe to reuse.
STARTUP_FILES = (CONFIG_FILE, ENV_FILE, METRICS_FILE, SPIKES_FILE)


def failed_start(run_dir: Path) -> bool:
    """True when `run_dir` holds what a start writes and nothing more: no checkpoint, no model, no other file."""
    if not run_dir.is_dir():
        return False
    for entry in run_dir.iterdir():
        if entry.name == CHECKPOINT_DIR and entry.is_dir() and not any(entry.glob("checkpoint-*")):
            continue
        if entry.name not in STARTUP_FILES:
            return False
    return True


def check_run_dir(run_dir: Path, resume: bool) -> bool:
    """A run directory is never overwritten: resume it, or choose another. A directory left by a start that failed
    before its first checkpoint (no checkpoint, no model) is reused; returns True when that is the case."""
    OutputPlan().run_directory(run_dir)  # a file, or a path under a file: one line, before anything
    exists = run_dir.exists() and any(run_dir.iterdir())
    if resume and not (run_dir / CONFIG_FILE).is_file():
        raise RunDirError(f"{run_dir}: nothing to resume (no config.yaml); start a new run without --resume")
    if exists and not resume:
        if failed_start(run_dir):
            return True
        raise RunDirError(
            f"{run_dir}: run directory already exists; pass --resume to continue it or --output-dir to start another"
        )
    return False


def clear_failed_start(run_dir: Path) -> list[str]:
    """Remove what a failed start left (see `failed_start`); returns the names removed, to be reported."""
    removed = []
    for name in STARTUP_FILES:
        if (run_dir / name).is_file():
            (run_dir / name).unlink()
            removed.append(name)
    if (run_dir / CHECKPOINT_DIR).is_dir():
        import shutil

        shutil.rmtree(run_dir / CHECKPOINT_DIR)
        removed.append(CHECKPOINT_DIR + "/")
    return removed


def checkpoint_step(checkpoint: str | Path) -> int:
    """The optimizer step a `checkpoint-N` directory was saved at."""
    return int(Path(checkpoint).name.split("-")[-1])


INCOMPLETE_PREFIX = "incomplete-"  # checkpoints/incomplete-checkpoint-N-<time>: moved aside, never deleted
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


def _weights(directory: Path) -> list[Path]:
    """The weight files of a model or checkpoint directory (single, sharded, adapter or FSDP-sharded)."""
    prefixes = ("model", "adapter_model", "pytorch_model")
    weights = [
        p for p in directory.iterdir() if p.is_file() and p.name.startswith(prefixes) and p.suffix in WEIGHT_SUFFIXES
    ]
    sharded = [
        p for p in directory.iterdir() if p.is_dir() and p.name.startswith(("pytorch_model_fsdp", "global_step"))
    ]
    return weights + [f for d in sharded for f in d.rglob("*") if f.is_file()]


def _json_problem(path: Path) -> str | None:
    if not path.is_file():
        return f"no {path.name}"
    try:
        json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return f"{path.name} is empty or cut short"
    return None


def _weights_problem(directory: Path) -> str | None:
    weights = _weights(directory)
    if not weights:
        return "no weight files"
    empty = [w.name for w in weights if w.stat().st_size == 0]
    return f"{empty[0]} is empty" if empty else None


def checkpoint_problem(checkpoint: str | Path) -> str | None:
    """Why `checkpoint-N/` cannot be resumed from (a save cut short by a kill), or None when it is complete: the
    HF Trainer writes the weights, then the optimizer, scheduler and RNG states, and trainer_state.json last."""
    checkpoint = Path(checkpoint)
    problem = _json_problem(checkpoint / TRAINER_STATE_FILE) or _weights_problem(checkpoint)
    if problem:
        return problem
    optimizer = [p for p in checkpoint.iterdir() if p.name == "optimizer.pt" or p.name.startswith("optimizer_")]
    only_model = json.loads((checkpoint / TRAINER_STATE_FILE).read_text(encoding="utf-8")).get("save_only_model")
    if not optimizer and not only_model and not any(p.name.startswith("global_step") for p in checkpoint.iterdir()):
        return "no optimizer state"
    if any(p.is_file() and p.stat().st_size == 0 for p in optimizer):
        return "optimizer.pt is empty"
    return None


def model_problem(model_dir: str | Path) -> str | None:
    """Why a saved model/ is unusable (missing, or cut short by a kill before the atomic save existed), or None."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        return "missing"
    config = "adapter_config.json" if (model_dir / "adapter_config.json").exists() else "config.json"
    return _json_problem(model_dir / config) or _weights_problem(model_dir)


def move_aside(path: Path) -> Path:
    """Keep what a kill left, under a name nothing reads (`incomplete-<name>-<time>`), instead of deleting it."""
    target = path.with_name(f"{INCOMPLETE_PREFIX}{path.name}-{datetime.now().strftime('%Y%m%d-%H%M%S-%f')}")
    path.rename(target)
    return target


def find_checkpoint(run_dir: Path) -> tuple[str | None, list[tuple[Path, str]]]:
    """The newest *complete* checkpoint, and the newer ones a kill cut short with what each lacks (the caller moves
    them aside with `move_aside` once every other check has passed, so a refused resume changes nothing)."""
    checkpoints = run_dir / CHECKPOINT_DIR
    if not checkpoints.is_dir():
        return None, []
    found = [p for p in checkpoints.iterdir() if p.is_dir() and p.name.startswith("checkpoint-")]
    incomplete = []
    for checkpoint in sorted((p for p in found if p.name.split("-")[-1].isdigit()), key=checkpoint_step, reverse=True):
        problem = checkpoint_problem(checkpoint)
        if problem is None:
            return str(checkpoint), incomplete
        incomplete.append((checkpoint, problem))
    return None, incomplete


def git_commit() -> str | None:
    """The commit of the checkout dialsum runs from (an editable install or the source tree). None for an
    installed copy: its files are in no repository of their own, and a virtual environment that happens to sit
    inside some other checkout must not lend it that checkout's commit."""
    here = Path(__file__).resolve()
    try:
        top = subprocess.run(
            ["git", "-C", str(here.parent), "rev-parse", "--show-toplevel"], capture_output=True, text=True, timeout=5
        ).stdout.strip()
        if not top or here.relative_to(Path(top).resolve()).as_posix() != "src/dialsum/rundir.py":
            return None
        out = subprocess.run(["git", "-C", top, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError, ValueError):
        return None


def _dialsum_version() -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("dialsum")
    except PackageNotFoundError:
        return None


def file_digests(paths: list[Path]) -> list[dict[str, Any]]:
    """Path, size and SHA-256 of each file: env.json's record of exactly which training data a run saw."""
    import hashlib

    records = []
    for path in paths:
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        records.append({"path": str(path), "bytes": Path(path).stat().st_size, "sha256": digest.hexdigest()})
    return records


def write_env(
    run_dir: Path, precision: dict | None = None, distributed: str | None = None, train_files: list | None = None
) -> None:
    import peft
    import torch
    import transformers
    import trl

    env = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "trl": trl.__version__,
        "peft": peft.__version__,
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"cpu ({os.cpu_count()} cores)",
        "world_size": int(os.environ.get("WORLD_SIZE", "1")),
        "distributed": distributed,
        "dialsum": _dialsum_version(),
        "git_commit": git_commit(),
        "command": sys.argv,
        "started": datetime.now().isoformat(timespec="seconds"),
        "precision": precision,
        "train_files": train_files or [],
        "resumes": [],
    }
    write_json(run_dir / ENV_FILE, env)


def append_resume(run_dir: Path, step: int, overrides: list[str]) -> None:
    """env.json keeps the first start and appends one entry per resume: command, time, step, overrides."""
    path = run_dir / ENV_FILE
    env = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    env.setdefault("resumes", []).append(
        {
            "command": sys.argv,
            "time": datetime.now().isoformat(timespec="seconds"),
            "step": step,
            "overrides": overrides,
        }
    )
    write_json(path, env)


def drop_metrics_after(path: Path, step: int) -> int:
    """On resume, forget log lines past the checkpoint so each step is logged once. Returns how many unreadable
    lines (a run killed mid-write) went with them, for the caller to report."""
    rows, bad = read_jsonl(path)
    if path.is_file():
        kept = [row for row in rows if row.get("step", 0) <= step]
        write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in kept))
    return len(bad)


# ---------------------------------------------------------------- reading a run


def prediction_files(path: str | Path, split: str) -> list[Path]:
    """The prediction files `path` holds for `split`: the file itself; a run directory's `split` file; every fold's
    of a kfold parent (for `oof`, the parent's joined out-of-fold file, so two kfold runs over the same split
    compare on train); or, for a folder of runs, each run's."""
    path = Path(path)
    if split not in SPLIT_FILES:
        raise RunDirError(f"--split {split!r}: expected one of {', '.join(SPLIT_FILES)}")
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise RunDirError(f"{path}: no such file or directory")
    file_name = SPLIT_FILES[split]
    if (path / KFOLD_FILE).is_file() and split == "oof":
        found = [path / file_name]
    elif (path / KFOLD_FILE).is_file():
        folds = json.loads((path / KFOLD_FILE).read_text(encoding="utf-8"))["folds"]
        found = [path / fold["dir"] / file_name for fold in folds]
    elif (path / file_name).is_file() or (path / CONFIG_FILE).is_file():
        found = [path / file_name]
    else:
        found = sorted(path.glob(f"*/{file_name}"))
        if not found:
            raise RunDirError(
                f"{path}: neither a run directory nor a kfold directory (no {KFOLD_FILE}, no */{file_name})"
            )
    missing = [str(p) for p in found if not p.is_file()]
    if missing:
        raise RunDirError(f"{path}: --split {split} needs {file_name} in every run; missing: {', '.join(missing)}")
    return found


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


# ---------------------------------------------------------------- presenting a run


def summary_rows(summary: dict[str, Any]) -> list[list[str]]:
    """summary.json's training numbers as [label, value] rows ("—" where one is missing). The console summary of
    `dialsum train` and the Training table of report.md both show exactly these rows, so they cannot disagree."""
    s = summary.get

    def fmt(value: Any, spec: str = "") -> str:
        if value is None or value == "":
            return "—"
        return format(value, spec) if isinstance(value, float) and spec else str(value)

    rows = [
        ["steps / epochs", f"{fmt(s('steps'))} / {fmt(s('epochs'))}"],
        ["examples / optimizer step (mean)", fmt(s("examples_per_optimizer_step"), ".1f")],
        ["optimizer steps / epoch", fmt(s("optimizer_steps_per_epoch"))],
        ["train time", f"{fmt(s('train_seconds'), '.1f')} s"],
        ["tokens/s (real tokens)", fmt(s("tokens_per_second"), ".1f")],
        ["real-token fraction", fmt(s("real_token_fraction"), ".3f")],
        ["final train loss", fmt(s("final_train_loss"), ".4f")],
        ["final eval loss", fmt(s("final_eval_loss"), ".4f")],
    ]
    if s("best_step") is not None:
        metric = str(s("best_metric") or "").removeprefix("eval_").replace("_", " ")
        best = f"step {s('best_step')}, eval {metric} {fmt(s('best_metric_value'), '.4f')}"
        if s("best_metric") != "eval_loss":  # selected by ROUGE: the loss there too
            best += f" (eval loss there {fmt(s('best_eval_loss'), '.4f')})"
        rows.append(["model/ = best checkpoint", best])
    precision = s("precision") or {}
    if precision:
        frozen = "/".join(precision.get("frozen_weights", []))
        frozen = f"frozen {frozen}" if frozen else "all trained"  # full fine-tuning freezes nothing
        rows.append(
            [
                "precision",
                f"weights {'/'.join(precision.get('trainable_weights', []))} ({frozen}), "
                f"compute {precision.get('compute')}, optimizer state "
                f"{'/'.join(precision.get('optimizer_state', []))}",
            ]
        )
    spikes = [x for x in s("grad_norm_spikes") or [] if isinstance(x, list) and len(x) == 2]
    worst = max(spikes, key=lambda x: x[1]) if spikes else None
    rows.append(
        [
            f"grad-norm > {fmt(s('grad_norm_threshold'))}",
            f"{len(spikes)} step(s)" + (f", max {worst[1]:.2f} at step {int(worst[0])}" if worst else ""),
        ]
    )
    encode = s("encode") or {}
    if s("train_examples") is not None:
        rows.append(
            [
                "examples",
                f"{s('train_examples')} train ({encode.get('trimmed', 0)} trimmed, "
                f"{len(encode.get('skipped_ids', []))} skipped), {fmt(s('dev_examples'))} dev",
            ]
        )
    if s("train_sources"):
        rows.append(["train sources", ", ".join(f"{name} {count}" for name, count in s("train_sources").items())])
    return rows
