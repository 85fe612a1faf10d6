"""`dialsum run`: train → predict dev → score dev → predict test → submission.csv + report.md.

One command from a config file to a competition submission and a report a person can read.
"""

from __future__ import annotations

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


def screen(
    model_names: list[str],
    data_path: str | Path,
    config: Config | None = None,
    overrides: list[str] | None = None,
    limit: int | None = None,
) -> list[dict]:
    """Zero-shot screening: predict and score each model without training, ranked by final score.

    `lead` (the first utterance, speaker tag removed) is the floor every table needs: a model below
    it is worse than copying the first line.
    """
    from rich.table import Table

    from dialsum.config import config_from_dict
    from dialsum.generate import lead_baseline

    dialogues = [d for d in load_dialogues(data_path) if d.references][:limit]
    results = []
    for name in model_names:
        if name == "lead":
            predictions = [lead_baseline(d) for d in dialogues]
            eval_config = config or config_from_dict({"model": {"name_or_path": "lead"}}, overrides)
        else:
            raw = config.to_dict() if config else {}
            raw["model"] = {**raw.get("model", {}), "name_or_path": name}
            model_config = config_from_dict(raw, overrides)
            predictor = Predictor.from_path(name, model_config, what="--models")
            eval_config = predictor.config
            predictions = predict_split(predictor, dialogues, eval_config, split=name).summaries
            del predictor
        scores, _ = score_dialogues(
            predictions, dialogues, eval_config.evaluation, eval_config.generation.forbidden_scripts
        )
        results.append({"model": name, **scores})
    results.sort(key=lambda r: -1.0 if r.get(r["headline"]) is None else r[r["headline"]], reverse=True)
    table = Table(title=f"zero-shot screening on {data_path} ({len(dialogues)} dialogues)")
    scheme = results[0]["scheme"] if results else "kiwi"
    for column in ("rank", "model", "ROUGE-1", "ROUGE-2", "ROUGE-L", "final", "foreign %"):
        table.add_column(column, justify="left" if column == "model" else "right")
    for rank, r in enumerate(results, 1):
        cells = ["—" if r.get(k) is None else f"{r[k]:.2f}" for k in ("rouge1", "rouge2", "rougeL", "final_score")]
        table.add_row(str(rank), r["model"], *cells, f"{r['foreign_rate']:.1f}")
    table.caption = f"scheme {scheme}; analyzer: {results[0]['analyzer']}" if results else None
    Console().print(table)
    return results
