"""One run's report (RUN_DIR/report.md), and the plots and Markdown helpers `dialsum compare` shares.

Everything here only reads what a run directory already holds; nothing trains or generates, and nothing
imports torch. A missing file shows as "—" with a note, never as an error.

Plots use matplotlib's object API (`Figure`, rendered by Agg when saved as PNG) rather than pyplot:
no global backend switch, no figures left open. Labels stay ASCII so no Korean font is needed.
"""

from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path
from typing import Any

from rich.console import Console

from dialsum.plots import grad_norm_threshold, run_plots
from dialsum.rundir import (
    CONFIG_FILE,
    DEV_PER_SAMPLE_FILE,
    DEV_SCORES_FILE,
    METRICS_FILE,
    REPORT_FILE,
    SUMMARY_FILE,
    RunData,
    load_run,
    summary_rows,
)
from dialsum.writer import write_text

console = Console(stderr=True)


MISSING = "—"
CELL_WIDTH = 60  # long settings (prompts) are cut in tables; compare.json keeps them whole
_ABSENT = object()  # a setting a run does not have


def _missing_file_notes(run: RunData) -> list[str]:
    """Why a column has dashes. Missing env.json or spikes file is normal (no spikes → no file)."""
    why = {
        CONFIG_FILE: "not a run directory?",
        SUMMARY_FILE: "incomplete run?",
        METRICS_FILE: "training never logged",
        DEV_SCORES_FILE: "data.dev not set"
        if run.config.get("data.dev") is None and run.config
        else "no dev scoring yet: `dialsum run` not finished?",
    }
    return [f"{run.path}: no {name} ({why[name]})" for name in run.missing if name in why]


def format_metric(value: float | None, fmt: str) -> str:
    if value is None:
        return MISSING
    if not math.isfinite(value):
        return str(value)
    return format(int(value), "d") if fmt == "d" else format(value, fmt)


def format_setting(value: Any) -> str:
    if value is _ABSENT:
        return MISSING
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list):
        return "[" + ", ".join(str(v) for v in value) + "]"
    return str(value)


# ---------------------------------------------------------------- markdown


def md_cell(value: Any) -> str:
    """Text safe inside a GitHub table cell: `|` escaped, newlines as <br>, `</s>`-like tokens kept visible."""
    text = str(value).replace("\r\n", "\n").replace("\r", "\n").strip()
    return text.replace("\\", "\\\\").replace("<", "&lt;").replace("|", "\\|").replace("\n", "<br>")


def md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(md_cell(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(md_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _shorten(text: str, width: int = CELL_WIDTH) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _relative(target: Path, start: Path) -> str:
    try:
        return Path(os.path.relpath(target.resolve(), start.resolve())).as_posix()
    except ValueError:  # another drive on Windows
        return target.resolve().as_posix()


# ---------------------------------------------------------------- one run's report


def _fmt(value: Any, spec: str = "") -> str:
    if value is None or value == "":
        return MISSING
    if isinstance(value, float) and spec:
        return format(value, spec)
    return format_setting(value)


def _warmup_text(c) -> str:
    """'20 steps' (training.warmup_steps) or the ratio, the default where a run's config left both unset."""
    from dialsum.config import DEFAULT_WARMUP_RATIO

    if c("training.warmup_steps") is not None:
        return f"{_fmt(c('training.warmup_steps'))} steps"
    ratio = c("training.warmup_ratio")
    return _fmt(DEFAULT_WARMUP_RATIO if ratio is None else ratio)


def _setup_rows(run: RunData) -> list[list[str]]:
    c = run.config.get
    if not c("lora.enabled"):
        lora = "off (full fine-tuning)"
    else:
        kind = "QLoRA 4-bit" if c("lora.load_in_4bit") else "LoRA"
        lora = (
            f"{kind} r={c('lora.r')}, alpha={c('lora.alpha')}, dropout={c('lora.dropout')}, "
            f"targets {format_setting(c('lora.target_modules'))}"
        )
    per_device, accumulation = c("training.per_device_train_batch_size"), c("training.gradient_accumulation_steps")
    batch = run.summary.get("effective_batch_size") or (
        per_device * accumulation if per_device and accumulation else None
    )
    batch_text = (
        f"{batch} ({per_device} x {accumulation} accumulation x {run.summary.get('world_size', 1)} process(es))"
        if batch
        else MISSING
    )
    if batch and run.summary.get("effective_batch_unit"):  # packing counts examples unless configured in rows
        batch_text = f"{batch} {run.summary['effective_batch_unit']} " + batch_text.removeprefix(f"{batch} ")
    max_steps = c("training.max_steps")
    length = (
        f"max_steps {max_steps}"
        if isinstance(max_steps, int) and max_steps > 0
        else f"{_fmt(c('training.num_train_epochs'))} epoch(s)"
    )
    return [
        ["model", _fmt(c("model.name_or_path"))],
        ["kind", _fmt(c("model.kind"))],
        ["LoRA", lora if run.config else MISSING],
        [
            "learning rate",
            f"{_fmt(c('training.learning_rate'))} ({_fmt(c('training.lr_scheduler_type'))}, "
            f"warmup {_warmup_text(c) if run.config else MISSING}, weight decay {_fmt(c('training.weight_decay'))})",
        ],
        ["effective batch", batch_text],
        ["max length", _fmt(c("training.max_length"))],
        ["packing", _fmt(c("training.packing"))],
        ["length of training", length if run.config else MISSING],
        ["data", f"train {_fmt(c('data.train'))}, dev {_fmt(c('data.dev'))}, test {_fmt(c('data.test'))}"],
        [
            "generation",
            f"{_fmt(c('generation.backend'))}, beams {_fmt(c('generation.num_beams'))}, "
            f"max_new_tokens {_fmt(c('generation.max_new_tokens'))}",
        ],
    ]


def _spikes_section(run: RunData, limit: int = 20) -> list[str]:
    spikes = run.summary.get("grad_norm_spikes")
    if not isinstance(spikes, list):  # no summary: the spikes file is the record
        spikes = [[row.get("step"), row.get("grad_norm")] for row in run.spikes]
    spikes = [s for s in spikes if isinstance(s, list) and len(s) == 2 and isinstance(s[1], (int, float))]
    threshold = grad_norm_threshold(run)
    lines = [
        f"Threshold {_fmt(threshold)}: {len(spikes)} optimizer step(s) above it; "
        f"max grad norm {_fmt(run.summary.get('grad_norm_max'), '.3f')}."
    ]
    if spikes:
        largest = sorted(spikes, key=lambda s: -s[1])[:limit]
        title = "largest" if len(spikes) > limit else "all"
        lines += [
            "",
            f"Spikes ({title}, by step):",
            "",
            md_table(["step", "grad norm"], [[_fmt(s[0]), f"{s[1]:.3f}"] for s in sorted(largest, key=lambda s: s[0])]),
        ]
    return lines


def _dev_scores_section(dev_scores: dict | None) -> list[str]:
    """The scheme's metrics as a person names them, the headline in bold with what it means, its interval and the
    public/private halves, then the diagnostics; every score says how it was computed (scheme and analyzer)."""
    from dialsum.degeneracy import describe_degeneracy
    from dialsum.schemes import describe_halves, describe_interval, get_scheme

    if not dev_scores:
        return ["No dev scores (data.dev not set, or the run did not get to scoring)."]
    scheme = get_scheme(dev_scores.get("scheme", "kiwi"))
    analyzer = dev_scores.get("analyzer", f"tokenizer {dev_scores.get('tokenizer', 'kiwi')}")
    rows = []
    for key, label in scheme.columns():
        value = "not computed" if dev_scores.get(key) is None else f"{dev_scores[key]:.2f}"
        rows.append([f"**{label}**", f"**{value}**"] if key == scheme.headline else [label, value])
    for label, text in (
        ("95 % interval", describe_interval(dev_scores)),
        ("public / private", describe_halves(dev_scores)),
        ("degeneracy", describe_degeneracy(dev_scores)),
    ):
        if text:
            rows.append([label, text])
    rows += [
        ["foreign-script predictions", f"{_fmt(dev_scores.get('foreign_rate'), '.1f')} %"],
        ["empty predictions", _fmt(dev_scores.get("empty_predictions"))],
        [
            "mean length pred / ref (characters)",
            f"{_fmt(dev_scores.get('pred_len'), '.1f')} / {_fmt(dev_scores.get('ref_len'), '.1f')}",
        ],
        ["dialogues scored", _fmt(dev_scores.get("n"))],
    ]
    if dev_scores.get("skipped_without_reference"):
        rows.append(["dev dialogues without a reference (not scored)", _fmt(dev_scores["skipped_without_reference"])])
    lines = []
    if (dev_scores.get("degeneracy") or {}).get("degenerate"):
        lines += [
            "**Warning: the predictions are degenerate (repetition / tag spam): these scores are not to be "
            "trusted.** Set-based and clipped ROUGE reward repeating the references' frequent pieces.",
            "",
        ]
    lines += [
        f"Scheme `{scheme.name}`: {md_cell(scheme.competition)}. Analyzer: {md_cell(str(analyzer))}.",
        "",
        f"The headline, in bold, is the {md_cell(scheme.headline_label)}: what "
        + ("the leaderboard ranks by." if scheme.name != "kiwi" else "dialsum ranks by (no leaderboard's scale)."),
        "",
        md_table(["metric", "value"], rows),
    ]
    lines += [""] + [f"- note: {md_cell(str(note))}" for note in dev_scores.get("notes", [])]
    return lines


def _read_examples(path: Path) -> list[dict] | None:
    """dev_per_sample.csv back into example dicts (numbers as floats), for regenerating a report."""
    if not path.is_file():
        return None
    with path.open(encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    for row in rows:
        for key, value in row.items():
            if key not in ("id", "prediction", "reference", "topic", "cleaned", "foreign_chars"):
                try:
                    row[key] = float(value)
                except (TypeError, ValueError):
                    pass
    return rows


def pick_examples(examples: list[dict], score_key: str, k: int = 5) -> tuple[list[dict], list[dict]]:
    """The k best and k worst examples by score_key (worst first); they never overlap."""
    ranked = sorted(
        (e for e in examples if isinstance(e.get(score_key), (int, float))),
        key=lambda e: e[score_key],
        reverse=True,
    )
    return ranked[:k], ranked[max(k, len(ranked) - k) :][::-1]


def _examples_section(examples: list[dict] | None, score_key: str | None, k: int, scheme_name: str) -> list[str]:
    from dialsum.schemes import get_scheme

    if not examples:
        return ["No dev examples."]
    scheme = get_scheme(scheme_name)
    score_key = score_key or scheme.rank_key(examples[0])  # the headline per row, or (dcs offline) ROUGE-1
    if score_key not in examples[0]:
        return [f"Dev examples carry no {score_key}: cannot rank them."]
    best, worst = pick_examples(examples, score_key, k)
    header = ["id", score_key, "prediction", "reference"]

    def to_row(example: dict) -> list[str]:
        prediction = str(example.get("prediction") or "").strip() or "(empty)"
        return [
            _fmt(example.get("id")),
            format_metric(example[score_key], ".2f"),
            prediction,
            str(example.get("reference") or ""),
        ]

    lines = [f"### Best {len(best)} (by {score_key})", "", md_table(header, [to_row(e) for e in best])]
    lines += [
        "",
        f"### Worst {len(worst)} (by {score_key})",
        "",
        md_table(header, [to_row(e) for e in worst]) if worst else "Too few examples.",
    ]
    return lines


def _cleanup_section(run_dir: Path) -> list[str]:
    """Summaries changed by each clean-up step (cleanup.json, written by `dialsum run`), per split."""
    from dialsum.cleanup import STEPS
    from dialsum.rundir import CLEANUP_FILE

    path = run_dir / CLEANUP_FILE
    if not path.is_file():
        return []
    counts = json.loads(path.read_text(encoding="utf-8"))
    splits = [split for split in ("dev", "test") if split in counts]
    rows = [[step] + [str(counts[split].get(step, "off")) for split in splits] for step in STEPS]
    return [
        "",
        "## Clean-up",
        "",
        "Summaries each step changed (`cleanup.*` switches; off: not run).",
        "",
        md_table(["step", *splits], rows),
    ]


def _length_section(run_dir: Path) -> list[str]:
    """generation.max_new_tokens=auto: dev with the per-bucket rule beside one fixed limit (length_control.json)."""
    from dialsum.rundir import LENGTH_CONTROL_FILE

    path = run_dir / LENGTH_CONTROL_FILE
    if not path.is_file():
        return []
    from dialsum.schemes import get_scheme

    data = json.loads(path.read_text(encoding="utf-8"))
    scheme = get_scheme(data.get("scheme", "kiwi"))
    rows = []
    for name, label in (("auto", "per-bucket rule (auto)"), ("fixed", "fixed, one limit")):
        s = data[name]
        rows.append(
            [label, f"{s['mean_limit']:.1f}", *(_fmt(s.get(k), ".2f") for k in scheme.keys), f"{s['pred_len']:.1f}"]
        )
    buckets = [
        [("≤ %.0f" % b["max_chars"]) if b["max_chars"] is not None else "longer", str(b["n"]), str(b["limit"])]
        for b in data["rule"]["buckets"]
    ]
    return [
        "",
        "## Length control",
        "",
        f"Dev generated twice: with the length rule fitted on `{data['rule'].get('fitted_on', '')}` "
        f"(quantile {data['rule']['quantile']}) and with its single global limit.",
        "",
        md_table(["max_new_tokens", "mean limit", *(label for _, label in scheme.columns()), "mean chars"], rows),
        "",
        md_table(["dialogue chars", "training dialogues", "limit (tokens)"], buckets),
    ]


def write_run_report(
    run_dir: str | Path,
    dev_scores: dict | None = None,
    examples: list[dict] | None = None,
    score_key: str | None = None,
    n_examples: int = 5,
) -> Path:
    """RUN_DIR/report.md: setup, training health, dev scores, plots, best and worst dev examples.

    dev_scores/examples default to the run's dev_scores.json/dev_per_sample.csv, so a report can be
    rebuilt later from the directory alone. score_key ranks examples (default: the scheme's ranking key per row).
    """
    run_dir = Path(run_dir)
    run = load_run(run_dir)
    if dev_scores is None:
        dev_scores = run.dev_scores or None
    if examples is None:
        examples = _read_examples(run_dir / DEV_PER_SAMPLE_FILE)
    plots = run_plots(run_dir)

    env = run.env
    header = " · ".join(
        part
        for part in [
            f"`{run_dir}`",
            f"started {env['started']}" if env.get("started") else "",
            f"commit {str(env['git_commit'])[:10]}" if env.get("git_commit") else "",
            str(env.get("device", "")),
        ]
        if part
    )
    parts = [
        f"# Run report: {run.name}",
        "",
        header,
        "",
        "## Setup",
        "",
        md_table(["setting", "value"], _setup_rows(run)),
    ]
    parts += [
        "",
        "## Training",
        "",
        md_table(["measure", "value"], summary_rows(run.summary)),
        "",
        "### Grad-norm spikes",
        "",
        *_spikes_section(run),
    ]
    parts += ["", "## Dev scores", "", *_dev_scores_section(dev_scores)]
    parts += _cleanup_section(run_dir)
    parts += _length_section(run_dir)
    if plots:
        parts += ["", "## Plots", ""] + [f"![{p.stem}]({_relative(p, run_dir)})\n" for p in plots]
    parts += [
        "",
        "## Dev examples",
        "",
        *_examples_section(examples, score_key, n_examples, (dev_scores or {}).get("scheme", "kiwi")),
    ]
    notes = [n for n in _missing_file_notes(run) if DEV_SCORES_FILE not in n] + run.problems
    if notes:
        parts += ["", "## Notes", ""] + [f"- {md_cell(note)}" for note in notes]
    path = run_dir / REPORT_FILE
    write_text(path, "\n".join(parts).rstrip() + "\n")
    return path
