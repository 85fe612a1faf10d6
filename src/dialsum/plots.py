"""PNG plots of one run or several overlaid: loss, grad norm (with the spike threshold), learning rate, and the dev
scores per evaluation (the scheme's headline), written through the writer layer. report.md and compare embed them."""

from __future__ import annotations

from pathlib import Path

from dialsum.rundir import (
    PLOTS_DIR,
    RunData,
    load_run,
)
from dialsum.writer import save_figure


def _series(rows: list[dict], key: str) -> tuple[list[float], list[float]]:
    points = [
        (row["step"], row[key])
        for row in rows
        if isinstance(row.get("step"), (int, float))
        and isinstance(row.get(key), (int, float))
        and not isinstance(row.get(key), bool)
    ]
    return [p[0] for p in points], [p[1] for p in points]


def _new_axes(title: str, ylabel: str, n_axes: int = 1):
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(8, 4.5 if n_axes == 1 else 3.5 * n_axes), layout="constrained")
    axes = fig.subplots(n_axes, 1, squeeze=False)[:, 0]
    fig.suptitle(title)
    for ax in axes:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("step")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    return fig, axes


def _draw_runs(ax, runs: list[RunData], key: str, label_suffix: str = "", linestyle: str = "-") -> bool:
    drew = False
    for i, run in enumerate(runs):
        steps, values = _series(run.metrics, key)
        if steps:
            ax.plot(
                steps,
                values,
                label=f"{run.name}{label_suffix}",
                color=f"C{i}",
                linestyle=linestyle,
                marker="." if len(steps) <= 60 else None,
            )
            drew = True
    return drew


def grad_norm_threshold(run: RunData) -> float | None:
    value = run.summary.get("grad_norm_threshold", run.config.get("training.grad_norm_threshold"))
    return float(value) if isinstance(value, (int, float)) else None


def plot_metric(runs: list[RunData], key: str, path: Path, title: str, ylabel: str) -> Path | None:
    """One logged metric against step, every run overlaid; None (no file) when no run logged it."""
    fig, (ax,) = _new_axes(title, ylabel)
    if not _draw_runs(ax, runs, key):
        return None
    if key == "learning_rate":
        ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    if key == "grad_norm":
        # Spikes are recorded at every optimizer step, logs only every logging.steps: show both.
        for i, run in enumerate(runs):
            steps, norms = _series(run.spikes, "grad_norm")
            if steps:
                ax.scatter(steps, norms, color=f"C{i}", marker="x", zorder=3, label=f"{run.name} spikes")
        thresholds = {grad_norm_threshold(run) for run in runs} - {None}
        for threshold in sorted(thresholds):
            ax.axhline(threshold, color="gray", linestyle="--", linewidth=1, label=f"threshold {threshold:g}")
    ax.legend(fontsize="small")
    save_figure(fig, path, dpi=110)
    return path


def plot_eval(runs: list[RunData], path: Path) -> Path | None:
    """Eval loss and dev ROUGE during training, each in its own panel, only the panels that have data."""
    fig = eval_figure(runs)
    if fig is None:
        return None
    save_figure(fig, path, dpi=110)
    return path


def _label_points(ax, runs: list[RunData], key: str, most: int = 12) -> None:
    """A few evaluations: each point carries its value, so the reader sees the size of a change, not its slope."""
    for run in runs:
        steps, values = _series(run.metrics, key)
        if 0 < len(steps) <= most:
            for step, value in zip(steps, values):
                ax.annotate(
                    f"{value:.4g}",
                    (step, value),
                    textcoords="offset points",
                    xytext=(0, 6),
                    ha="center",
                    fontsize="x-small",
                )


def eval_figure(runs: list[RunData]):
    """The eval panels; each y axis starts at 0 (loss and ROUGE are never negative), so two evaluations 0.09
    apart look 0.09 apart, and a handful of points are labelled with their values."""

    def has(key: str) -> bool:
        return any(_series(run.metrics, key)[0] for run in runs)

    from dialsum.schemes import SCHEMES

    # one line per run: the scheme's headline (final score), the sum of older runs, else each metric logged (dcs)
    metrics = dict.fromkeys(f"eval_{m}" for s in SCHEMES.values() for m in s.metrics)
    rouge_keys = (
        next(([k] for k in ("eval_final_score", "eval_rouge_sum") if has(k)), None)
        or [k for k in metrics if has(k)][:3]
    )
    panels = (["eval_loss"] if has("eval_loss") else []) + (["rouge"] if rouge_keys else [])
    if not panels:
        return None
    fig, axes = _new_axes("Evaluation during training", "", n_axes=len(panels))
    for ax, panel in zip(axes, panels):
        if panel == "eval_loss":
            ax.set_ylabel("eval loss")
            _draw_runs(ax, runs, "eval_loss")
            _label_points(ax, runs, "eval_loss")
        else:
            ax.set_ylabel("dev ROUGE")
            for key, style in zip(rouge_keys, ["-", "--", ":"]):
                suffix = "" if len(rouge_keys) == 1 else f" {key.removeprefix('eval_')}"
                _draw_runs(ax, runs, key, label_suffix=suffix, linestyle=style)
                _label_points(ax, runs, key)
        ax.set_ylim(bottom=0, top=ax.get_ylim()[1] * 1.08)  # room above the top label
        ax.legend(fontsize="small")
    return fig


def write_plots(
    runs: list[RunData], output_dir: Path, keys: tuple[str, ...] = ("loss", "grad_norm", "learning_rate", "eval")
) -> list[Path]:
    """loss.png, grad_norm.png, learning_rate.png, eval.png in output_dir; a plot without data is skipped."""
    specs = {
        "loss": ("Training loss", "loss"),
        "grad_norm": ("Gradient norm (before clipping)", "grad norm"),
        "learning_rate": ("Learning rate", "learning rate"),
    }
    written = []
    for key in keys:
        if key == "eval":
            path = plot_eval(runs, output_dir / "eval.png")
        else:
            path = plot_metric(runs, key, output_dir / f"{key}.png", *specs[key])
        if path is not None:
            written.append(path)
    return written


def run_plots(run_dir: str | Path, output_dir: str | Path | None = None) -> list[Path]:
    """Loss and grad-norm plots of one run (eval too when logged), by default into RUN_DIR/plots/."""
    run = load_run(run_dir)
    return write_plots(
        [run], Path(output_dir) if output_dir else Path(run_dir) / PLOTS_DIR, keys=("loss", "grad_norm", "eval")
    )
