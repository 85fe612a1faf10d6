"""What `dialsum tune` leaves behind: trials.csv, best.yaml (a config fragment), split.csv, tune.md and its plots,
all through writer.py."""

from __future__ import annotations

import os
from typing import Any

import yaml

from dialsum.rundir import (
    TUNE_BEST_FILE,
    TUNE_HISTORY_PLOT,
    TUNE_PARAMS_PLOT,
    TUNE_REPORT_FILE,
    TUNE_SPLIT_FILE,
    TUNE_TRIALS_FILE,
)
from dialsum.writer import save_figure, write_csv, write_text

__all__ = ["write_outputs"]

TOP = 10  # trials listed in tune.md


def _short(value: Any, width: int = 40) -> str:
    text = value if isinstance(value, str) else f"{value:.4g}" if isinstance(value, float) else str(value)
    text = text.replace("\n", " ").replace("|", "\\|")
    return text if len(text) <= width else text[: width - 1] + "…"


def _number(value: float | None) -> str:
    return "" if value is None else f"{value:.4f}"


def _trials_csv(result) -> None:
    keys = [d["key"] for d in result.space]
    header = ["trial", "state", "pruned", "cached", "tuning_score", "heldout_score", "seconds", "rows_generated", *keys]
    rows = [["untuned", "baseline", False, False, result.untuned["tuning"], result.untuned["heldout"], "", "",
             *(result.untuned["settings"].get(k, "") for k in keys)]]  # fmt: skip
    for t in result.trials:
        heldout = result.heldout["best"] if t["number"] == result.best["number"] else ""
        seconds = round(t["seconds"], 3) if t["seconds"] is not None else ""
        value = "" if t["value"] is None else t["value"]
        generated = t["rows_generated"] if t["rows_generated"] is not None else ""
        rows.append([t["number"], t["state"], t["state"] == "pruned", t["cached"], value, heldout, seconds, generated,
                     *(t["settings"].get(k, "") for k in keys)])  # fmt: skip
    write_csv(result.output_dir / TUNE_TRIALS_FILE, header, rows)


def _best_yaml(result) -> str:
    held = result.heldout
    interval = held["interval"]
    span = f" [{interval['low']:.4f}, {interval['high']:.4f}]" if interval else ""
    lines = [
        f"# dialsum tune: study '{result.study_name}', trial {result.best['number']} of {len(result.trials)}",
        f"# {result.scheme['label']}: tuning half {result.best['tuning']:.4f} "
        f"(untuned {result.untuned['tuning']:.4f}), "
        f"held-out half {held['best']:.4f}{span} (untuned {result.untuned['heldout']:.4f})",
        "# Use: dialsum predict --model RUN_DIR --config best.yaml ...   (its keys apply over the run's config)",
        "#      dialsum run best.yaml                                     (the base config with these settings)",
    ]
    body: dict[str, Any] = {}
    if result.base_file is not None:
        body["base"] = os.path.relpath(result.base_file.resolve(), result.output_dir.resolve())
    body.update(result.fragment)
    return "\n".join(lines) + "\n" + yaml.safe_dump(body, allow_unicode=True, sort_keys=False)


def _plots(result) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    done = [t for t in result.trials if t["state"] == "complete"]
    figure, axis = plt.subplots(figsize=(7, 4))
    numbers, values = [t["number"] for t in done], [t["value"] for t in done]
    axis.scatter(numbers, values, s=16, label="trial (tuning half)")
    best, best_so_far = float("-inf"), []
    for value in values:
        best = max(best, value)
        best_so_far.append(best)
    axis.step(numbers, best_so_far, where="post", color="C1", label="best so far")
    axis.axhline(result.untuned["tuning"], color="grey", linestyle="--", label="untuned")
    axis.set_xlabel("trial")
    axis.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    axis.set_ylabel(result.scheme["label"])
    axis.set_title("Optimisation history")
    axis.legend(loc="lower right", fontsize=8)
    save_figure(figure, result.output_dir / TUNE_HISTORY_PLOT, dpi=100, bbox_inches="tight")
    plt.close(figure)

    keys = [d["key"] for d in result.space if d.get("choices") is None or len(d["choices"]) > 1]
    figure, axes = plt.subplots(1, max(len(keys), 1), figsize=(3.2 * max(len(keys), 1), 3.2), squeeze=False)
    for axis, key in zip(axes[0], keys):
        points = [(t["settings"][key], t["value"]) for t in done if key in t["settings"]]
        labels = sorted({str(x) for x, _ in points})
        if points and all(isinstance(x, (int, float)) for x, _ in points):
            axis.scatter([x for x, _ in points], [y for _, y in points], s=14)
        elif points:  # texts: one column per distinct text
            axis.scatter([labels.index(str(x)) for x, _ in points], [y for _, y in points], s=14)
            axis.set_xticks(range(len(labels)), [_short(label, 12) for label in labels], rotation=30, fontsize=6)
        axis.set_title(key.split(".", 1)[1], fontsize=9)
    axes[0][0].set_ylabel(result.scheme["label"], fontsize=8)
    figure.tight_layout()
    save_figure(figure, result.output_dir / TUNE_PARAMS_PLOT, dpi=100)
    plt.close(figure)


def pruning_savings(trials: list[dict[str, Any]], rows: int) -> dict[str, Any]:
    """Rows generated vs rows every finished trial would have generated without pruning and the cache."""
    finished = [t for t in trials if t["state"] in ("complete", "pruned")]
    generated = sum(t["rows_generated"] or 0 for t in finished)
    full = rows * len(finished)
    pruned = sum(rows - (t["rows_generated"] or 0) for t in finished if t["state"] == "pruned" and not t["cached"])
    return {
        "rows_generated": generated,
        "rows_without_pruning": full,
        "saved_by_pruning": pruned / full if full else 0.0,
        "saved_total": 1 - generated / full if full else 0.0,
    }


def _report(result) -> str:
    held, label = result.heldout, result.scheme["label"]
    interval = held["interval"]
    span = f" [{interval['low']:.4f}, {interval['high']:.4f}]" if interval else ""
    diff = held["difference"]
    n_tuning, n_held = len(result.split["tuning"]), len(result.split["heldout"])
    lines = [
        f"# Tuning decoding: study `{result.study_name}`",
        "",
        f"Scheme `{result.scheme['name']}` ({label}). Data `{result.split.get('data', '')}` split by topic, seed "
        f"{result.split['seed']}: {n_tuning} tuning rows (trials optimise these), {n_held} held-out rows (scored "
        f"only for the best trial and the untuned config). Storage `{result.storage}`. "
        f"Sampler: {'grid' if result.grid else 'TPE'}, median pruner after a slice of the tuning rows.",
        "",
        "## Held-out comparison",
        "",
        "| settings | tuning half | held-out half |",
        "| --- | --- | --- |",
        f"| untuned (the run's config) | {result.untuned['tuning']:.4f} | {result.untuned['heldout']:.4f} |",
        f"| best trial {result.best['number']} | {result.best['tuning']:.4f} | {held['best']:.4f}{span} |",
        f"| gain | {held['tuning_gain']:+.4f} | {held['heldout_gain']:+.4f} "
        f"(paired 95 % interval [{diff['low']:+.4f}, {diff['high']:+.4f}], "
        f"better in {diff['better']:.0%} of resamples) |",
        "",
        f"**Warning:** {result.warning}" if result.warning else "The held-out gain is in line with the tuning gain.",
        "",
        f"Best settings (`{TUNE_BEST_FILE}`): "
        + ", ".join(
            f"`{section}.{k}` = {_short(v)}"
            for section, values in result.fragment.items()
            for k, v in values.items()
            if k != "length_rule"
        ),  # fmt: skip
        "",
        f"## Top trials (of {len(result.trials)})",
        "",
    ]
    keys = [d["key"] for d in result.space]
    lines.append("| trial | tuning score | seconds | " + " | ".join(f"`{k.split('.', 1)[1]}`" for k in keys) + " |")
    lines.append("| --- " * (3 + len(keys)) + "|")
    done = sorted((t for t in result.trials if t["state"] == "complete"), key=lambda t: -t["value"])
    for t in done[:TOP]:
        seconds = "cached" if t["cached"] else _number(t["seconds"])
        cells = [str(t["number"]), f"{t['value']:.4f}", seconds, *(_short(t["settings"].get(k, "–")) for k in keys)]
        lines.append("| " + " | ".join(cells) + " |")
    savings = pruning_savings(result.trials, n_tuning)
    states = [t["state"] for t in result.trials]
    lines += [
        "",
        f"{states.count('complete')} complete, {states.count('pruned')} pruned, {states.count('fail')} failed; "
        f"{sum(t['cached'] for t in result.trials)} answered from the settings cache. Pruning saved "
        f"{savings['saved_by_pruning']:.0%} of the generation ({savings['rows_generated']} of "
        f"{savings['rows_without_pruning']} rows generated, cache included).",
        "",
        f"![optimisation history]({TUNE_HISTORY_PLOT})",
        "",
        f"![score against each parameter]({TUNE_PARAMS_PLOT})",
        "",
    ]
    return "\n".join(lines)


def write_outputs(result) -> None:
    out = result.output_dir
    _trials_csv(result)
    write_text(out / TUNE_BEST_FILE, _best_yaml(result))
    halves = [(i, "tuning") for i in result.split["tuning"]] + [(i, "heldout") for i in result.split["heldout"]]
    write_csv(out / TUNE_SPLIT_FILE, ["fname", "half"], halves)
    _plots(result)
    write_text(out / TUNE_REPORT_FILE, _report(result))
    print(
        f"tune: best trial {result.best['number']}: tuning {result.best['tuning']:.4f} (untuned "
        f"{result.untuned['tuning']:.4f}), held-out {result.heldout['best']:.4f} (untuned "
        f"{result.untuned['heldout']:.4f}); wrote {out / TUNE_REPORT_FILE} and {out / TUNE_BEST_FILE}"
    )
