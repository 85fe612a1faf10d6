"""`dialsum kfold`: K runs on K folds of the training data, each a normal run directory under one parent.

The parent holds

    kfold.json               the split (K, seed, which file each fold's rows came from) and the fold directories
    data/fold-I-train.csv    the rows fold I trains on (the original rows, every column, verbatim)
    data/fold-I-heldout.csv  the rows it holds out
    fold-I/                  a normal `dialsum run` directory (config.yaml, model/, dev_*, submission.csv, report.md)
                             plus oof_predictions.csv / oof_scores.json: its predictions for its held-out rows
    oof_predictions.csv      every training row predicted by the fold that never saw it (once all folds are done)
    kfold.md, kfold_scores.json   per-fold and mean scores (and, K >= 3, the folds' MBR ensemble on dev)
    ensemble_dev.csv, ensemble_test.csv, submission.csv   the folds' consensus (K >= 3, all folds done)

Folds train one after another, or one per job with `--fold I` (same `--output-dir`), e.g. on separate GPUs.
Each fold trains through `run.run`, so the accelerate/torchrun path and `--resume` work as for any run: a killed
fold continues from its last checkpoint with `--resume`; finished folds are skipped.

With every fold done (K >= 3) the parent also gets the folds' MBR consensus (`dialsum ensemble PARENT`, default
utility) on dev, scored, and on test as a submission; `dialsum ensemble` runs it with other settings or sources.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console

from dialsum.config import Config, config_from_dict, load_config
from dialsum.data import data_format, load_dialogues, read_table, write_predictions
from dialsum.errors import ConfigError, DataError, RunDirError
from dialsum.rundir import (
    CONFIG_FILE,
    DEV_PREDICTIONS_FILE,
    DEV_SCORES_FILE,
    KFOLD_ENSEMBLE_DEV,
    KFOLD_ENSEMBLE_TEST,
    KFOLD_FILE,
    KFOLD_REPORT_FILE,
    KFOLD_SCORES_FILE,
    KFOLD_SUBMISSION,
    OOF_PREDICTIONS_FILE,
    OOF_SCORES_FILE,
    REPORT_FILE,
    SUBMISSION_FILE,
    fold_data_file,
    fold_dir_name,
)
from dialsum.writer import OutputPlan, write_bytes, write_dict_rows, write_json, write_text

__all__ = ["assign_folds", "kfold", "summarise_kfold"]

console = Console(stderr=True)


def assign_folds(ids: Sequence[str], k: int, seed: int) -> list[int]:
    """Fold index per id: a seeded shuffle dealt round-robin, so fold sizes differ by at most one."""
    order = list(range(len(ids)))
    random.Random(seed).shuffle(order)
    folds = [0] * len(ids)
    for position, index in enumerate(order):
        folds[index] = position % k
    return folds


def _read_records(path: Path) -> tuple[list[str], list[dict[str, Any]]]:
    """(ids, raw records) of a data file, to write subsets back verbatim: CSV rows or DCS JSON objects."""
    dialogues = load_dialogues(path)  # validates; bad data fails before anything is written
    fmt = data_format(path)
    if fmt == "csv":
        rows = read_table(path, required=["fname", "dialogue"])
    elif fmt == "json":
        rows = json.loads(path.read_text(encoding="utf-8-sig"))
    else:
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8-sig").splitlines() if line.strip()]
    return [d.id for d in dialogues], rows


def _write_records(path: Path, records: list[dict[str, Any]], csv_format: bool) -> None:
    if csv_format:
        write_dict_rows(path, records)
    else:
        write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))


def _prepare(config: Config, parent: Path, k: int, include_dev: bool) -> dict[str, Any]:
    """Write (or check) kfold.json and the fold data files; the same call twice gives the same split."""
    if config.data.train is None:
        raise ConfigError("data.train is not set: kfold needs a training file")
    train_file = config.data.train if isinstance(config.data.train, str) else None
    if train_file is None:
        if len(config.data.train) != 1:
            raise ConfigError("data.train: kfold splits one training file; give one file, not a list")
        train_file = config.data.train[0]
    if include_dev and not config.data.dev:
        raise ConfigError("--include-dev needs data.dev in the config")
    files = [Path(train_file)] + ([Path(config.data.dev)] if include_dev else [])
    kinds = {data_format(p) == "csv" for p in files}
    if len(kinds) > 1:
        raise DataError(f"--include-dev: {files[0]} and {files[1]} must both be CSV or both DCS JSON/JSONL")
    ids: list[str] = []
    records: list[dict[str, Any]] = []
    origin: list[str] = []
    for path in files:
        file_ids, file_records = _read_records(path)
        ids += file_ids
        records += file_records
        origin += [str(path)] * len(file_ids)
    seen: set[str] = set()
    for id_, source in zip(ids, origin):
        if id_ in seen:
            raise DataError(f"{source}: id {id_!r} also appears in an earlier training file; ids must be unique")
        seen.add(id_)
    if len(ids) < k:
        raise ConfigError(f"--folds {k}: only {len(ids)} training dialogues")

    seed = config.training.seed
    folds = assign_folds(ids, k, seed)
    spec = {
        "k": k,
        "seed": seed,
        "include_dev": include_dev,
        "files": [str(p) for p in files],
        "dev": None if include_dev else config.data.dev,  # the labeled set every fold predicts (for the ensemble)
        "test": config.data.test,
        "n": len(ids),
        "folds": [
            {
                "fold": i,
                "dir": fold_dir_name(i),
                "heldout": sum(1 for f in folds if f == i),
                "train": sum(1 for f in folds if f != i),
            }
            for i in range(k)
        ],
        "assignment": dict(zip(ids, folds)),
    }
    spec_path = parent / KFOLD_FILE
    if spec_path.is_file():
        old = json.loads(spec_path.read_text(encoding="utf-8"))
        if {key: old.get(key) for key in ("k", "seed", "include_dev", "assignment")} != {
            key: spec[key] for key in ("k", "seed", "include_dev", "assignment")
        }:
            raise RunDirError(
                f"{parent}: holds a different k-fold split ({KFOLD_FILE}: k={old.get('k')}, seed={old.get('seed')}, "
                f"include_dev={old.get('include_dev')}); use another --output-dir"
            )
        return old
    parent.mkdir(parents=True, exist_ok=True)  # only now: bad data or flags leave nothing behind
    csv_format = data_format(files[0]) == "csv"
    suffix = ".csv" if csv_format else ".jsonl"
    for i in range(k):
        train_rows = [r for r, f in zip(records, folds) if f != i]
        heldout_rows = [r for r, f in zip(records, folds) if f == i]
        _write_records(fold_data_file(parent, i, "train", suffix), train_rows, csv_format)
        _write_records(fold_data_file(parent, i, "heldout", suffix), heldout_rows, csv_format)
    for fold in spec["folds"]:
        fold["train_file"] = str(fold_data_file(parent, fold["fold"], "train", suffix))
        fold["heldout_file"] = str(fold_data_file(parent, fold["fold"], "heldout", suffix))
    write_json(spec_path, spec)
    return spec


def _fold_config(config: Config, fold: dict[str, Any], include_dev: bool) -> Config:
    raw = config.to_dict()
    raw["data"]["train"] = fold["train_file"]
    if include_dev:  # the real dev set is training data now: the fold's dev is its held-out part
        raw["data"]["dev"] = fold["heldout_file"]
    return config_from_dict(raw, source="kfold")


def _predict_heldout(run_dir: Path, fold: dict[str, Any], include_dev: bool) -> dict[str, Any]:
    """The fold's predictions for its held-out rows (out-of-fold) and their scores."""
    from dialsum.predict import Predictor, predict_split, write_split
    from dialsum.schemes import score_dialogues

    if include_dev:  # the run already predicted and scored them as its dev set
        write_bytes(run_dir / OOF_PREDICTIONS_FILE, (run_dir / DEV_PREDICTIONS_FILE).read_bytes())
        scores = json.loads((run_dir / DEV_SCORES_FILE).read_text(encoding="utf-8"))
    else:
        strip = load_config(run_dir / CONFIG_FILE).data.strip_whitespace  # read as the fold's run read its data
        heldout = [d for d in load_dialogues(fold["heldout_file"], strip) if d.references]
        predictor = Predictor.from_path(run_dir)
        config = predictor.config
        prediction = predict_split(predictor, heldout, config, split=f"fold {fold['fold']} held out")
        write_split(prediction, run_dir / OOF_PREDICTIONS_FILE, fold["heldout_file"])
        scores, _ = score_dialogues(
            prediction.summaries, heldout, config.evaluation, config.generation.forbidden_scripts
        )
        del predictor
    write_json(run_dir / OOF_SCORES_FILE, scores)
    return scores


def kfold(
    config: Config,
    folds: int,
    output_dir: str | Path | None = None,
    fold: int | None = None,
    include_dev: bool = False,
    resume: bool = False,
    config_path: str | Path | None = None,
) -> Path:
    """Train and predict the folds (all, or only `fold`); returns the parent directory."""
    from accelerate import PartialState

    from dialsum.run import run
    from dialsum.rundir import default_run_dir

    if folds < 2:
        raise ConfigError(f"--folds {folds}: need at least 2 folds")
    if fold is not None and not 0 <= fold < folds:
        raise ConfigError(f"--fold {fold}: expected 0..{folds - 1}")
    if resume and output_dir is None:
        raise ConfigError("--resume needs --output-dir PARENT (the k-fold run to continue)")
    if fold is not None and output_dir is None:
        raise ConfigError("--fold needs --output-dir: every fold's job must write into the same parent directory")
    parent = Path(output_dir) if output_dir else Path(str(default_run_dir(config, config_path)) + f"-kfold{folds}")
    OutputPlan().run_directory(parent)  # a file, or a path under a file: one line, before anything
    state = PartialState()
    with state.main_process_first():  # one process writes the split, the others read it
        spec = _prepare(config, parent, folds, include_dev)

    for entry in spec["folds"]:
        if fold is not None and entry["fold"] != fold:
            continue
        run_dir = parent / entry["dir"]
        if (run_dir / OOF_SCORES_FILE).is_file():
            console.print(f"fold {entry['fold']}: done already ({run_dir}), skipped")
            continue
        if not (run_dir / REPORT_FILE).is_file():
            if run_dir.exists() and not resume:
                raise RunDirError(
                    f"{run_dir}: fold {entry['fold']} started but did not finish; pass --resume to "
                    "continue it from its last checkpoint"
                )
            console.rule(f"fold {entry['fold']} of {folds}: train {entry['train']}, held out {entry['heldout']}")
            run(
                _fold_config(config, entry, include_dev),
                config_path=config_path,
                output_dir=run_dir,
                resume=resume and run_dir.exists(),
            )
        if state.is_main_process:
            _predict_heldout(run_dir, entry, include_dev)
    if state.is_main_process:
        summarise_kfold(parent)
    return parent


def _ensemble_folds(parent: Path, spec: dict[str, Any], scheme: str, tokenizer: str) -> dict[str, Any]:
    """MBR over the folds: dev (scored against the references under the folds' own scheme, so it sits beside their
    mean on one scale) and test (as a submission), where every fold has them."""
    import io

    from dialsum.ensemble import ensemble_files
    from dialsum.schemes import get_scheme

    quiet = Console(file=io.StringIO())
    dirs = [parent / entry["dir"] for entry in spec["folds"]]
    result: dict[str, Any] = {}
    if spec.get("dev") and all((d / DEV_PREDICTIONS_FILE).is_file() for d in dirs):
        report = ensemble_files(
            [d / DEV_PREDICTIONS_FILE for d in dirs],
            parent / KFOLD_ENSEMBLE_DEV,
            references=spec["dev"],
            console=quiet,
            scheme=scheme,
            tokenizer=tokenizer,
        )
        result["ensemble_dev"] = {k: report["ensemble"].get(k) for k in get_scheme(scheme).keys}
        result["ensemble_dev"].update(scheme=scheme, analyzer=report["analyzer"])
    if all((d / SUBMISSION_FILE).is_file() for d in dirs):
        ensemble_files(
            [d / SUBMISSION_FILE for d in dirs],
            parent / KFOLD_ENSEMBLE_TEST,
            submission=parent / KFOLD_SUBMISSION,
            console=quiet,
            scheme=scheme,
            tokenizer=tokenizer,
        )
        result["ensemble_test"] = str(parent / KFOLD_SUBMISSION)
    return result


def _fold_scores(parent: Path, spec: dict[str, Any]) -> list[dict[str, dict[str, Any]]]:
    """Per fold, {"oof": scores, "dev": scores} of the files that exist (dev only without include_dev)."""
    found = []
    for entry in spec["folds"]:
        run_dir = parent / entry["dir"]
        scores = {}
        for name, file in (("oof", OOF_SCORES_FILE), ("dev", DEV_SCORES_FILE)):
            path = run_dir / file
            if path.is_file() and not (name == "dev" and spec["include_dev"]):
                scores[name] = json.loads(path.read_text(encoding="utf-8"))
        found.append(scores)
    return found


def _mean(rows: list[dict[str, Any]], prefix: str, keys: Sequence[str]) -> dict[str, float | None]:
    values = {k: [r.get(f"{prefix}_{k}") for r in rows] for k in keys}
    return {k: None if any(v is None for v in vs) else sum(vs) / len(vs) for k, vs in values.items()}


def summarise_kfold(parent: str | Path) -> dict[str, Any]:
    """Per-fold out-of-fold and dev scores, their means, and (all folds done) the joint OOF file and score. Every
    number is on the folds' own scheme (from their score files), named with its analyzer in kfold.md."""
    from rich.table import Table

    from dialsum.schemes import SHORT_LABELS, get_scheme

    parent = Path(parent)
    spec = json.loads((parent / KFOLD_FILE).read_text(encoding="utf-8"))
    found = _fold_scores(parent, spec)
    any_scores = [s for fold in found for s in fold.values()]
    schemes = {s.get("scheme", "kiwi") for s in any_scores} or {"kiwi"}
    if len(schemes) > 1:
        raise DataError(f"{parent}: the folds were scored under different schemes ({', '.join(sorted(schemes))})")
    scheme = get_scheme(schemes.pop())
    tokenizer = next((s.get("tokenizer", "kiwi") for s in any_scores), "kiwi")
    analyzer = next((s["analyzer"] for s in any_scores if s.get("analyzer")), f"tokenizer {tokenizer}")
    keys = scheme.keys
    rows: list[dict[str, Any]] = []
    for entry, scores in zip(spec["folds"], found):
        run_dir = parent / entry["dir"]
        row: dict[str, Any] = {"fold": entry["fold"], "train": entry["train"], "heldout": entry["heldout"]}
        for name, values in scores.items():
            row.update({f"{name}_{k}": values.get(k) for k in keys})
            row[f"{name}_done"] = True
        row["test_predictions"] = (run_dir / SUBMISSION_FILE).is_file()
        rows.append(row)
    done = [r for r in rows if r.get("oof_done")]
    summary: dict[str, Any] = {
        "k": spec["k"],
        "include_dev": spec["include_dev"],
        "scheme": scheme.name,
        "analyzer": analyzer,
        "folds": rows,
        "folds_done": len(done),
    }
    for name in ("oof", "dev"):
        present = [r for r in done if r.get(f"{name}_done")]
        if present:
            summary[f"mean_{name}"] = _mean(present, name, keys)

    if len(done) == len(rows) and len(rows) >= 3:  # the folds' consensus (two sources would always tie)
        summary.update(_ensemble_folds(parent, spec, scheme.name, tokenizer))

    if len(done) == len(rows):  # every training row predicted by the fold that held it out, in input order
        predicted: dict[str, str] = {}
        for entry in spec["folds"]:
            for record in read_table(parent / entry["dir"] / OOF_PREDICTIONS_FILE, required=["fname", "summary"]):
                predicted[record["fname"]] = record["summary"]
        ids = [i for i in spec["assignment"] if i in predicted]
        write_predictions(parent / OOF_PREDICTIONS_FILE, ids, [predicted[i] for i in ids])
        summary["oof_predictions"] = len(ids)
        summary["oof_without_reference"] = len(spec["assignment"]) - len(ids)

    # the dev column: the headline, or where it is missing (dcs offline) the fallback, as the scheme ranks
    dev_key = scheme.rank_key(summary.get("mean_dev") or {})
    columns = ["fold", "train", "held out", *[f"OOF {SHORT_LABELS[k]}" for k in keys]]
    if not spec["include_dev"]:
        columns += [f"dev {SHORT_LABELS[dev_key]}"]
    columns += ["test preds"]
    caption = f"scheme {scheme.name} ({scheme.competition}); analyzer: {analyzer}"
    table = Table(title=f"{spec['k']}-fold run {parent} ({len(done)}/{len(rows)} folds done)", caption=caption)
    for column in columns:
        table.add_column(column, justify="right")

    def cells(r: dict[str, Any]) -> list[str]:
        values = [r.get(f"oof_{k}") for k in keys] + ([r.get(f"dev_{dev_key}")] if not spec["include_dev"] else [])
        return [f"{v:.2f}" if isinstance(v, (int, float)) else "-" for v in values]

    for r in rows:
        table.add_row(
            str(r["fold"]), str(r["train"]), str(r["heldout"]), *cells(r), "yes" if r["test_predictions"] else "no"
        )
    if done:
        mean = {f"oof_{k}": summary["mean_oof"][k] for k in keys}
        if "mean_dev" in summary:
            mean[f"dev_{dev_key}"] = summary["mean_dev"][dev_key]
        table.add_section()
        table.add_row("mean", "", "", *cells(mean), "")
    Console().print(table)

    write_json(parent / KFOLD_SCORES_FILE, summary)
    md = [
        f"# {spec['k']}-fold run",
        "",
        f"`{parent}` · seed {spec['seed']} · include_dev {spec['include_dev']} · {len(done)}/{len(rows)} folds done",
        "",
        f"Every score: scheme `{scheme.name}` ({scheme.competition}); analyzer: {analyzer}. "
        f"{SHORT_LABELS[scheme.headline]}: the {scheme.headline_label}.",
        "",
        "| " + " | ".join(columns) + " |",
        "|" + "---|" * len(columns),
    ]
    for r in rows:
        md.append(
            "| "
            + " | ".join(
                [
                    str(r["fold"]),
                    str(r["train"]),
                    str(r["heldout"]),
                    *cells(r),
                    "yes" if r["test_predictions"] else "no",
                ]
            )
            + " |"
        )
    if done:
        md.append("| mean |  |  | " + " | ".join(cells(mean)) + " |  |")
    if "ensemble_dev" in summary:
        e, mean_dev = summary["ensemble_dev"], summary.get("mean_dev") or {}

        def show(values: dict[str, Any], key: str) -> str:
            return "not computed" if values.get(key) is None else f"{values[key]:.2f}"

        md += [
            "",
            f"MBR ensemble of the {len(rows)} folds on dev (scheme `{scheme.name}`, as the folds): "
            f"{SHORT_LABELS[dev_key]} {show(e, dev_key)} ("
            + ", ".join(f"{SHORT_LABELS[k]} {show(e, k)}" for k in keys if k != dev_key)
            + f") against the folds' mean {show(mean_dev, dev_key)}; `{KFOLD_ENSEMBLE_DEV}`.",
        ]
    if "ensemble_test" in summary:
        md += ["", f"Test: the folds' consensus is in `{KFOLD_SUBMISSION}` (organizers' format)."]
    md += [
        "",
        "Ensemble the folds' test predictions: `dialsum ensemble " + str(parent) + f" --scheme {scheme.name} "
        "--split test --output ensemble.csv --submission submission.csv`.",
    ]
    write_text(parent / KFOLD_REPORT_FILE, "\n".join(md) + "\n")
    return summary
