"""`dialsum run`: train → predict dev → score dev → predict test → submission.csv + report.md.

One command from a config file to a competition submission and a report a person can read.
"""

from __future__ import annotations

import math
from pathlib import Path

from rich.console import Console

from dialsum.config import Config
from dialsum.data import Dialogue, load_dialogues
from dialsum.predict import Predictor, predict_split, write_split
from dialsum.prompt import topic_mismatch
from dialsum.rundir import (
    CLEANUP_FILE,
    DEV_PER_SAMPLE_FILE,
    DEV_PREDICTIONS_FILE,
    DEV_SCORES_FILE,
    GENERATION_FILE,
    SUBMISSION_FILE,
)
from dialsum.schemes import get_scheme, score_dialogues
from dialsum.writer import write_dict_rows, write_json

console = Console(stderr=True)


def _compare_length_control(
    run_dir: Path, predictor, labeled: list[Dialogue], config: Config, auto_scores: dict
) -> None:
    """Dev once more at the rule's single global limit: report.md shows the per-bucket rule beside it."""
    from dialsum.length import limits_for
    from dialsum.rundir import LENGTH_CONTROL_FILE

    rule = config.generation.length_rule
    fixed = predict_split(
        predictor, labeled, config, split="dev (one fixed limit)", max_new_tokens=[rule["global_limit"]] * len(labeled)
    )
    fixed_scores, _ = score_dialogues(fixed.summaries, labeled, config.evaluation, config.generation.forbidden_scripts)
    scheme = get_scheme(config.evaluation.scheme)
    keys = (*scheme.keys, "pred_len")
    limits = limits_for(config.generation, predictor.tokenizer, labeled)
    result = {
        "scheme": scheme.name,
        "auto": {**{k: auto_scores.get(k) for k in keys}, "mean_limit": sum(limits) / len(limits)},
        "fixed": {**{k: fixed_scores.get(k) for k in keys}, "mean_limit": float(rule["global_limit"])},
        "rule": rule,
    }
    write_json(run_dir / LENGTH_CONTROL_FILE, result)
    key = scheme.rank_key(auto_scores)
    label = dict(scheme.columns())[key]
    console.print(
        f"length control on dev: {label} {auto_scores[key]:.2f} with the per-bucket rule, "
        f"{fixed_scores[key]:.2f} with one fixed limit of {rule['global_limit']} tokens (scheme {scheme.name})"
    )


def preflight(config: Config) -> None:
    """Everything `run` needs after training, checked before training starts, so no setting fails hours in: the
    dev and test files read, the scheme's analyzer is installed, the generation settings validate (the config
    schema checked the script names and types already)."""
    from dialsum.schemes import require_scheme

    for name, path in (("data.dev", config.data.dev), ("data.test", config.data.test)):
        if path is not None:
            load_dialogues(path)  # a DataError names file, row and field
    if config.data.dev:
        require_scheme(config.evaluation.scheme)


def _submission_path(config: Config, run_dir: Path) -> Path:
    from dialsum.data import is_dcs

    submission = run_dir / SUBMISSION_FILE
    if is_dcs(config.data.test):  # DCS: the test file back with `output` filled in (submission.json/.jsonl)
        submission = submission.with_suffix(Path(config.data.test).suffix.lower())
    return submission


def run(
    config: Config,
    config_path: str | Path | None = None,
    output_dir: str | Path | None = None,
    resume: bool = False,
    overrides: list[str] | None = None,
) -> Path:
    """Train, then dev, then test, then the reports. With `resume`, every step whose outputs are on disk is
    skipped: a run that failed after training goes on from its first unfinished step and never retrains. A step
    is done when its last file is written (dev_scores.json for dev, the submission for test), each atomically."""
    import json

    from dialsum.htmlreport import write_run_html
    from dialsum.report import _read_examples, write_run_report
    from dialsum.schemes import print_scheme_scores
    from dialsum.train import train

    if not resume:
        preflight(config)
    # 1. Train (the run directory holds the resolved config, the length rule with max_new_tokens=auto, and the
    #    final model). On resume a finished training is not repeated.
    run_dir = train(
        config,
        config_path=config_path,
        output_dir=output_dir,
        resume=resume,
        overrides=overrides,
        finished_ok=True,
        command="run",
    )
    from accelerate import PartialState

    if not PartialState().is_main_process:
        return run_dir  # generation and scoring run once, on the main process
    predictor = Predictor.from_path(run_dir)
    config = predictor.config
    if resume:
        preflight(config)  # the saved config, as the steps below will use it
    generation_info: dict | None = None
    if (run_dir / GENERATION_FILE).is_file():
        generation_info = json.loads((run_dir / GENERATION_FILE).read_text(encoding="utf-8"))

    # 2. Dev: generate, score, keep per-row scores for error analysis.
    dev_scores, examples = None, None
    cleanup: dict[str, dict[str, int]] = {"dev": {}, "test": {}}  # what each clean-up step changed, per split
    if (run_dir / CLEANUP_FILE).is_file():
        cleanup.update(json.loads((run_dir / CLEANUP_FILE).read_text(encoding="utf-8")))
    dev_done = resume and (run_dir / DEV_SCORES_FILE).is_file()
    if config.data.dev and dev_done:
        dev_scores = json.loads((run_dir / DEV_SCORES_FILE).read_text(encoding="utf-8"))
        examples = _read_examples(run_dir / DEV_PER_SAMPLE_FILE) or None
        console.print(f"resume: dev already scored ({DEV_SCORES_FILE}); not predicted again")
    elif config.data.dev:
        dev = load_dialogues(config.data.dev, strip_whitespace=config.data.strip_whitespace)
        labeled = [d for d in dev if d.references]
        prediction = predict_split(predictor, labeled, config, split="dev")
        generation_info, cleanup["dev"] = prediction.generation, prediction.cleanup
        write_split(prediction, run_dir / DEV_PREDICTIONS_FILE, config.data.dev)
        if labeled:
            dev_scores, rows = score_dialogues(
                prediction.summaries, labeled, config.evaluation, config.generation.forbidden_scripts
            )
            dev_scores["skipped_without_reference"] = len(dev) - len(labeled)
            examples = [
                {
                    "id": d.id,
                    "prediction": p,
                    "reference": d.references[0],
                    **row,
                    "topic": d.topic or "",
                    "turns_cut": cut,  # turns the model never saw (trimmed to fit training.max_length)
                    "cleaned": " ".join(steps),  # the clean-up steps that changed this summary
                }
                for d, p, row, cut, steps in zip(
                    labeled, prediction.summaries, rows, prediction.turns_cut_per_row, prediction.cleaned_per_row
                )
            ]
            write_dict_rows(run_dir / DEV_PER_SAMPLE_FILE, examples)
            print_scheme_scores(dev_scores, title=f"dev scores — {config.data.dev}")
            if config.generation.max_new_tokens == "auto":
                _compare_length_control(run_dir, predictor, labeled, config, dev_scores)
            write_json(run_dir / DEV_SCORES_FILE, dev_scores)  # last: the dev step is done
        write_json(run_dir / CLEANUP_FILE, cleanup)

    # 3. Test: a submission in the input's order, every id kept.
    submission = _submission_path(config, run_dir) if config.data.test else None
    if submission is not None and resume and submission.is_file():
        console.print(f"resume: {submission.name} already written; not predicted again")
    elif submission is not None:
        test = load_dialogues(config.data.test, strip_whitespace=config.data.strip_whitespace)
        mismatch = topic_mismatch(config.prompt, test, str(config.data.test))
        if mismatch:
            console.print(f"[yellow]prompt:[/] {mismatch}")
        prediction = predict_split(predictor, test, config, split="test")
        generation_info, cleanup["test"] = generation_info or prediction.generation, prediction.cleanup
        write_json(run_dir / CLEANUP_FILE, cleanup)
        write_split(prediction, submission, config.data.test, organizers=True)  # last: the test step is done
        console.print(f"submission: {submission} ({len(test)} rows, {prediction.empty} empty)")

    if generation_info:  # the settings generation really ran with, and the checkpoint's it ignored
        write_json(run_dir / GENERATION_FILE, generation_info)
    write_json(run_dir / CLEANUP_FILE, cleanup)

    # 4. Report (cheap: always rewritten from the files).
    report = write_run_report(run_dir, dev_scores, examples)
    page = write_run_html(run_dir)
    console.print(f"report: {report}" + (f", error analysis: {page}" if page else ""))
    return run_dir


def _screen_names(names: list[str]) -> list[str]:
    """Row names that tell runs apart: a directory's own name, parent/name where two share it, as given otherwise
    (hub ids, 'lead')."""
    paths = [Path(n) for n in names]
    shown = [p.resolve().name if p.is_dir() else n for p, n in zip(paths, names)]
    shared = {n for n in shown if shown.count(n) > 1}
    shown = [f"{p.resolve().parent.name}/{n}" if p.is_dir() and n in shared else n for p, n in zip(paths, shown)]
    return [f"{n}#{i + 1}" if shown.count(n) > 1 else n for i, n in enumerate(shown)]


def screen(
    model_names: list[str],
    data_path: str | Path,
    config: Config | None = None,
    overrides: list[str] | None = None,
    limit: int | None = None,
    console: Console | None = None,
) -> list[dict]:
    """Zero-shot screening: predict and score each model without training, ranked by its scheme's headline.

    A run directory is generated and scored with its own config.yaml (generation: its n-gram ban, its length rule;
    evaluation: its scheme), so a run scores as it scored itself; `config` applies to the other models (hub ids,
    checkpoints); `overrides` (--set) win over both, and are said. Runs under different schemes are never ranked
    against each other: one table per scheme. `lead` (the first utterance, speaker tag removed) is the floor every
    table needs, scored under each table's scheme: a model below it is worse than copying the first line.
    """
    from rich.table import Table

    from dialsum.config import config_from_dict
    from dialsum.generate import lead_baseline
    from dialsum.models import resolve_inference_source
    from dialsum.rundir import CONFIG_FILE, MODEL_DIR
    from dialsum.schemes import SHORT_LABELS

    console = console or Console()
    overrides = overrides or []
    dialogues = [d for d in load_dialogues(data_path) if d.references][:limit]
    shown = dict(zip(model_names, _screen_names(model_names)))
    base = config or config_from_dict({"model": {"name_or_path": "lead"}}, overrides)
    if config is not None and overrides:
        base = config_from_dict(config.to_dict(), overrides)
    sources = {}  # every model's settings first (cheap): the schemes decide the tables before any generation
    for name in model_names:
        if name == "lead":
            continue
        path = Path(name)
        is_run = (path / CONFIG_FILE).is_file() or (path.name == MODEL_DIR and (path.parent / CONFIG_FILE).is_file())
        source = resolve_inference_source(name, None if is_run else config, overrides, what="--models")
        sources[name] = source
        said = f" with --set {' '.join(overrides)} over them" if overrides else ""
        if source.run_dir is not None:
            console.print(
                f"{shown[name]}: the run's own generation and evaluation settings (config.yaml){said}",
                soft_wrap=True,
                markup=False,
            )
        elif said:
            console.print(f"{shown[name]}: --set {' '.join(overrides)}", soft_wrap=True, markup=False)
    schemes = list(dict.fromkeys(s.config.evaluation.scheme for s in sources.values())) or [base.evaluation.scheme]

    results = []
    for name in model_names:
        if name == "lead":
            predictions = [lead_baseline(d) for d in dialogues]
            for scheme in schemes:  # the floor of every table
                evaluation = next(
                    (s.config.evaluation for s in sources.values() if s.config.evaluation.scheme == scheme),
                    base.evaluation,
                )
                scores, _ = score_dialogues(predictions, dialogues, evaluation, base.generation.forbidden_scripts)
                results.append({"model": "lead", "path": "lead", **scores})
            continue
        source = sources[name]
        predictor = Predictor.load(source)
        predictions = predict_split(predictor, dialogues, source.config, split=shown[name]).summaries
        del predictor
        scores, _ = score_dialogues(
            predictions, dialogues, source.config.evaluation, source.config.generation.forbidden_scripts
        )
        results.append({"model": shown[name], "path": name, **scores})

    for scheme_name in schemes:
        scheme = get_scheme(scheme_name)
        group = [r for r in results if r["scheme"] == scheme_name]
        group.sort(key=lambda r: -math.inf if scheme.rank_value(r) is None else scheme.rank_value(r), reverse=True)
        for rank, r in enumerate(group, 1):
            r["rank"] = rank
        table = Table(
            title=f"zero-shot screening on {data_path} ({len(dialogues)} dialogues), scheme {scheme_name}",
            caption=f"{scheme.competition}; analyzer: {group[0]['analyzer']}; "
            f"{SHORT_LABELS[scheme.headline]}: the {scheme.headline_label}",
        )
        table.add_column("rank", justify="right")
        table.add_column("model", overflow="fold")
        for key in scheme.keys:
            table.add_column(SHORT_LABELS[key], justify="right")
        table.add_column("foreign %", justify="right")
        table.add_column("degenerate", justify="right")
        for r in group:
            cells = ["—" if r.get(k) is None else f"{r[k]:.2f}" for k in scheme.keys]
            flag = "YES" if (r.get("degeneracy") or {}).get("degenerate") else "no"
            table.add_row(str(r["rank"]), r["model"], *cells, f"{r['foreign_rate']:.1f}", flag)
        console.print(table)
    results.sort(key=lambda r: (schemes.index(r["scheme"]), r["rank"]))
    return results
