"""`dialsum compare`: runs side by side — the settings that differ, the results, and overlaid plots.

Only reads what the run directories hold (`rundir.load_run`): nothing trains or generates and nothing imports
torch, so comparing is quick. Loading is forgiving on purpose: a crashed or half-written run still gets its
column, with "—" where a value is missing and a note that says why, so one broken run never hides the others.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.table import Table
from rich.text import Text

from dialsum.htmlcompare import write_compare_html
from dialsum.plots import grad_norm_threshold, write_plots
from dialsum.report import (
    _ABSENT,
    _missing_file_notes,
    _relative,
    _shorten,
    console,
    format_metric,
    format_setting,
    md_cell,
    md_table,
)
from dialsum.rundir import (
    COMPARE_HTML_FILE,
    COMPARE_JSON_FILE,
    COMPARE_REPORT_FILE,
    DEV_SCORES_FILE,
    SUMMARY_FILE,
    RunData,
    load_run,
)
from dialsum.writer import write_json, write_text

IGNORED_SETTINGS = {"logging.output_root"}  # says where a run was started, not what it did


def _column_names(paths: list[Path]) -> list[str]:
    """Run directory names; parent/name where two runs share a name, #i if that still collides."""
    names = [p.resolve().name for p in paths]
    if len(set(names)) < len(names):
        names = [f"{p.resolve().parent.name}/{p.resolve().name}" for p in paths]
    if len(set(names)) < len(names):
        names = [f"{n}#{i + 1}" for i, n in enumerate(names)]
    return names


# ---------------------------------------------------------------- what to compare


def _canonical(value: Any) -> str:
    # 1 and 1.0 are the same setting; lists compare by content.
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = float(value)
    return json.dumps(value, sort_keys=True, ensure_ascii=False)


def differing_settings(runs: list[RunData]) -> list[str]:
    """Dotted config keys whose value is not the same in every run that has a config, in config order."""
    configured = [run for run in runs if run.config]
    keys: dict[str, None] = {}
    for run in configured:
        keys.update(dict.fromkeys(run.config))
    differing = []
    for key in keys:
        if key in IGNORED_SETTINGS:
            continue
        values = {_canonical(run.config[key]) if key in run.config else "\0absent" for run in configured}
        if len(values) > 1:
            differing.append(key)
    return differing


@dataclass(frozen=True)
class Metric:
    name: str  # key in compare.json
    label: str  # row label in the tables
    source: str  # "dev_scores" or "summary"
    key: str
    fmt: str
    better: str | None = None  # "max" or "min": the best run's value is shown bold


def run_scheme(run: RunData) -> str:
    """The scheme a run's dev scores are on: dev_scores.json's, else its config's, else kiwi."""
    return str(run.dev_scores.get("scheme") or run.config.get("evaluation.scheme") or "kiwi")


def dev_metrics(runs: list[RunData]) -> list[Metric]:
    """One row per score key of the runs' schemes (schemes.py declares them), in the schemes' order. Runs under
    different schemes are on different scales: then no row ranks them (no bold)."""
    from dialsum.schemes import LABELS, get_scheme

    schemes = [get_scheme(name) for name in dict.fromkeys(run_scheme(run) for run in runs)] or [get_scheme("kiwi")]
    keys = list(dict.fromkeys(key for scheme in schemes for key in scheme.keys))
    better = "max" if len(schemes) == 1 else None

    def label(key: str) -> str:
        if len(schemes) == 1 and key == schemes[0].headline:
            return f"dev {schemes[0].headline_label}"
        return "dev " + LABELS[key].split(" (")[0].removesuffix(" F1")

    return [Metric(f"dev_{key}", label(key), "dev_scores", key, ".2f", better) for key in keys]


METRICS = [
    Metric("dev_foreign_rate", "dev foreign-script rate", "dev_scores", "foreign_rate", ".2f", "min"),
    Metric("grad_norm_spikes", "grad-norm spikes", "summary", "grad_norm_spikes", "d", "min"),
    Metric("grad_norm_max", "grad-norm max", "summary", "grad_norm_max", ".3f", "min"),
    Metric("train_seconds", "train time (s)", "summary", "train_seconds", ".1f", "min"),
    Metric("tokens_per_second", "tokens/s (real)", "summary", "tokens_per_second", ".1f", "max"),
    Metric("real_token_fraction", "real-token fraction", "summary", "real_token_fraction", ".3f", "max"),
    Metric("steps", "steps", "summary", "steps", "d"),
    Metric("examples_per_optimizer_step", "examples / optimizer step", "summary", "examples_per_optimizer_step", ".1f"),
    Metric("optimizer_steps_per_epoch", "optimizer steps / epoch", "summary", "optimizer_steps_per_epoch", "d"),
    Metric("final_train_loss", "final train loss", "summary", "final_train_loss", ".4f"),
    Metric("best_eval_loss", "eval loss at the selected step", "summary", "best_eval_loss", ".4f", "min"),
    Metric("best_step", "best step", "summary", "best_step", "d"),
]


def metric_value(run: RunData, metric: Metric) -> float | None:
    value = (run.dev_scores if metric.source == "dev_scores" else run.summary).get(metric.key)
    if metric.key == "grad_norm_spikes" and isinstance(value, list):
        value = len(value)  # the summary lists [step, norm] pairs; the table shows how many
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return value


def _best_runs(values: list[float | None], better: str | None) -> set[int]:
    """The runs to highlight (all tied ones): only when two or more runs have values that differ."""
    present = [v for v in values if v is not None and math.isfinite(v)]
    if better is None or len(present) < 2 or len(set(present)) == 1:
        return set()
    best = max(present) if better == "max" else min(present)
    return {i for i, v in enumerate(values) if v == best}


@dataclass
class Comparison:
    """The table compare.md, compare.json and the console show: strings for display, raw values for JSON."""

    names: list[str]
    paths: list[str]
    settings: dict[str, list[Any]]  # dotted key -> one raw value per run (_ABSENT where unknown)
    metrics: dict[str, list[float | None]]  # Metric.name -> one value per run
    notes: list[str]
    metric_list: list[Metric] = field(default_factory=list)  # the rows: the schemes' score keys, then METRICS
    scoring: dict[str, list[str]] = field(default_factory=dict)  # row label -> one text per run (scheme, interval)
    paired: dict[str, Any] = field(default_factory=dict)  # the paired bootstrap against the first run
    plots: list[Path] = field(default_factory=list)


def build_comparison(runs: list[RunData], notes: list[str]) -> Comparison:
    from dialsum.compare_scores import scoring_rows

    settings = {key: [run.config.get(key, _ABSENT) for run in runs] for key in differing_settings(runs)}
    metric_list = [*dev_metrics(runs), *METRICS]
    metrics = {m.name: [metric_value(run, m) for run in runs] for m in metric_list}
    schemes = sorted({run_scheme(run) for run in runs if run.dev_scores})
    if len(schemes) > 1:
        notes.append(
            f"the runs' dev scores are under different schemes ({', '.join(schemes)}): different scales, so no dev "
            "score row ranks them"
        )
    scoring, paired = scoring_rows(runs, notes)
    for run in runs:
        notes.extend(_missing_file_notes(run))
        notes.extend(run.problems)
        for source, data in (("dev_scores", run.dev_scores), ("summary", run.summary)):
            absent = [m.key for m in metric_list if m.source == source and m.key not in data]
            if data and absent:  # the file was read but lacks these keys
                file = DEV_SCORES_FILE if source == "dev_scores" else SUMMARY_FILE
                notes.append(f"{run.path}: {file} has no {', '.join(absent)}")
    if len(runs) > 1 and not settings and sum(bool(run.config) for run in runs) > 1:
        notes.append("every run has the same config (apart from logging.output_root)")
    return Comparison(
        [r.name for r in runs], [str(r.path) for r in runs], settings, metrics, notes, metric_list, scoring, paired
    )


# ---------------------------------------------------------------- compare


def _metric_cells(comparison: Comparison, metric: Metric) -> tuple[list[str], set[int]]:
    values = comparison.metrics[metric.name]
    return [format_metric(v, metric.fmt) for v in values], _best_runs(values, metric.better)


def _metric_label(metric: Metric, runs: list[RunData]) -> str:
    if metric.name == "grad_norm_spikes":
        thresholds = {grad_norm_threshold(run) for run in runs} - {None}
        return (
            f"grad-norm spikes (> {thresholds.pop():g})" if len(thresholds) == 1 else "grad-norm spikes (> threshold)"
        )
    return metric.label


def print_comparison(comparison: Comparison, runs: list[RunData]) -> None:
    table = Table(title="dialsum compare")
    table.add_column("")
    for name in comparison.names:
        table.add_column(name, overflow="fold")
    for key, values in comparison.settings.items():
        table.add_row(Text(key, style="cyan"), *[Text(_shorten(format_setting(v))) for v in values])
    table.add_section()
    for label, texts in comparison.scoring.items():
        table.add_row(label, *[Text(t) for t in texts])
    for metric in comparison.metric_list:
        cells, best = _metric_cells(comparison, metric)
        table.add_row(
            _metric_label(metric, runs),
            *[Text(c, style="bold green" if i in best else "") for i, c in enumerate(cells)],
        )
    console.print(table)
    for note in comparison.notes:
        console.print(Text(f"note: {note}", style="yellow"), soft_wrap=True)


def comparison_markdown(comparison: Comparison, runs: list[RunData], output_dir: Path) -> str:
    parts = ["# Run comparison", ""]
    parts += [f"- **{md_cell(run.name)}**: [`{run.path}`]({_relative(run.path, output_dir)})" for run in runs]
    parts += ["", "## Settings that differ", ""]
    if comparison.settings:
        rows = [[key, *[_shorten(format_setting(v)) for v in values]] for key, values in comparison.settings.items()]
        parts.append(md_table(["setting", *comparison.names], rows))
    else:
        parts.append("None: every run with a config.yaml has the same settings." if runs else "No runs to compare.")
    parts += ["", "## Results", ""]
    rows = [[label, *texts] for label, texts in comparison.scoring.items()]
    for metric in comparison.metric_list:
        cells, best = _metric_cells(comparison, metric)
        rows.append([_metric_label(metric, runs), *[f"**{c}**" if i in best else c for i, c in enumerate(cells)]])
    parts += [md_table(["metric", *comparison.names], rows), "", "Bold: the best run in that row (ties share it)."]
    parts += ["", *_headline_explanation(runs)]
    if comparison.notes:
        parts += ["", "## Notes", ""] + [f"- {md_cell(note)}" for note in comparison.notes]
    if comparison.plots:
        parts += ["", "## Plots", ""] + [f"![{p.stem}]({_relative(p, output_dir)})\n" for p in comparison.plots]
    return "\n".join(parts).rstrip() + "\n"


def comparison_json(comparison: Comparison) -> dict:
    return {
        "runs": [{"name": n, "path": p} for n, p in zip(comparison.names, comparison.paths)],
        "settings": {key: [None if v is _ABSENT else v for v in values] for key, values in comparison.settings.items()},
        "metrics": {
            name: [v if v is None or math.isfinite(v) else None for v in values]
            for name, values in comparison.metrics.items()
        },  # strict JSON: no NaN
        "scoring": comparison.scoring,
        "paired": comparison.paired,
        "notes": comparison.notes,
        "plots": [p.name for p in comparison.plots],
    }


def _headline_explanation(runs: list[RunData]) -> list[str]:
    """Which number is which: the scheme's headline (what its leaderboard ranks by) and the sum beside it."""
    from dialsum.schemes import get_scheme

    lines = []
    for name in dict.fromkeys(run_scheme(run) for run in runs if run.dev_scores):
        scheme = get_scheme(name)
        sum_note = ""
        if "rouge_sum" in scheme.keys:
            sum_note = " The ROUGE sum beside it is the sum of the three, not the leaderboard's number."
        lines.append(
            f"- Scheme `{name}`: the headline is the {scheme.headline_label} ({scheme.competition}).{sum_note}"
        )
    return lines


def default_compare_dir(run_dirs: list[str | Path]) -> Path:
    """compare-<time> beside the first run (under runs/ for runs made there), never in the working directory."""
    from datetime import datetime

    first = Path(run_dirs[0]) if run_dirs else Path("runs") / "x"
    return first.resolve().parent / f"compare-{datetime.now():%Y%m%d-%H%M%S}"


def compare_runs(run_dirs: list[str | Path], output_dir: str | Path | None = None, overwrite: bool = False) -> Path:
    """Compare runs: print the table, write compare.md, compare.json and plots into output_dir (default
    `default_compare_dir`), which must not be one of the runs and, unless `overwrite`, must be new or empty.

    A path that is not a directory is left out of the table and named in the notes; a run with
    missing or corrupt files keeps its column, with "—" and a note. Returns the compare.md path.
    """
    from dialsum.errors import RunDirError
    from dialsum.rundir import CONFIG_FILE, SUMMARY_FILE
    from dialsum.writer import OutputPlan

    if not any((Path(p) / CONFIG_FILE).is_file() or (Path(p) / SUMMARY_FILE).is_file() for p in run_dirs):
        raise RunDirError(
            f"compare: none of {', '.join(map(str, run_dirs))} is a run directory (no {CONFIG_FILE} or "
            f"{SUMMARY_FILE}); nothing written"
        )
    output_dir = Path(output_dir) if output_dir is not None else default_compare_dir(run_dirs)
    OutputPlan(run_dirs, overwrite).directory(output_dir, "--output")
    paths = [Path(p) for p in run_dirs]
    notes = [f"{p}: not a directory (left out)" for p in paths if not p.is_dir()]
    paths = [p for p in paths if p.is_dir()]
    runs = [load_run(path, name) for path, name in zip(paths, _column_names(paths))]
    comparison = build_comparison(runs, notes)
    comparison.plots = write_plots(runs, output_dir) if runs else []
    page = write_compare_html(paths, [run.name for run in runs], output_dir / COMPARE_HTML_FILE)
    if page is None and len(runs) > 1:
        comparison.notes.append("no compare.html: fewer than two runs have dev_per_sample.csv and dev_scores.json")
    print_comparison(comparison, runs)
    markdown = write_text(output_dir / COMPARE_REPORT_FILE, comparison_markdown(comparison, runs, output_dir))
    write_json(output_dir / COMPARE_JSON_FILE, comparison_json(comparison))
    return markdown
