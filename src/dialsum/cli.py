"""The `dialsum` command: a thin layer over importable functions.

Every user-fixable error (bad config key, bad data row, clobbered run dir) is a `DialsumError`,
printed as one line with exit code 2 and no traceback.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from dialsum.errors import DialsumError

app = typer.Typer(
    help="Fine-tune, generate, score and compare Korean dialogue summarizers.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

SetOption = Annotated[
    list[str] | None, typer.Option("--set", help="Override a config key, e.g. --set training.learning_rate=1e-5 (repeatable).")
]


def _config(path: Path, overrides: list[str] | None):
    from dialsum.config import load_config

    return load_config(path, overrides or [])


@app.command()
def train(
    config: Annotated[Path, typer.Argument(help="YAML run config.")],
    set_: SetOption = None,
    output_dir: Annotated[Path | None, typer.Option(help="Run directory (default runs/<config>-<time>).")] = None,
    resume: Annotated[bool, typer.Option(help="Continue the run in --output-dir from its last checkpoint.")] = False,
) -> None:
    """Fine-tune a model (SFT with leak-free packing, LoRA/QLoRA, or seq2seq) into a run directory."""
    from dialsum.train import train as run_training

    run_training(_config(config, set_), config_path=config, output_dir=output_dir, resume=resume)


@app.command()
def run(
    config: Annotated[Path, typer.Argument(help="YAML run config.")],
    set_: SetOption = None,
    output_dir: Annotated[Path | None, typer.Option(help="Run directory (default runs/<config>-<time>).")] = None,
    resume: Annotated[bool, typer.Option(help="Continue the run in --output-dir from its last checkpoint.")] = False,
) -> None:
    """End to end: train, predict and score dev, predict test, write submission.csv and report.md."""
    from dialsum.run import run as run_all

    run_all(_config(config, set_), config_path=config, output_dir=output_dir, resume=resume)


@app.command()
def predict(
    model: Annotated[str, typer.Option(help="Run directory, a run's model/ directory, or any HF model path.")],
    data: Annotated[Path, typer.Option(help="Dialogues to summarize (competition CSV or DCS JSON/JSONL).")],
    output: Annotated[Path, typer.Option(help="Output CSV fname,summary (input order).")],
    config: Annotated[Path | None, typer.Option(help="Config (default: the run's config.yaml).")] = None,
    set_: SetOption = None,
    num_candidates: Annotated[int, typer.Option(
        help="Candidates per dialogue (beams with generation.num_beams >= N, or samples with generation.do_sample); "
        "N > 1 writes fname,candidate,summary for dialsum ensemble.", min=1)] = 1,
) -> None:
    """Generate summaries in batches, Korean-only by default, into a CSV in the input's order."""
    from dialsum.generate import predict as run_predict

    run_predict(model, data, output, config=_config(config, set_) if config else None, overrides=set_ or [],
                num_candidates=num_candidates)


@app.command()
def evaluate(
    predictions: Annotated[Path, typer.Option(help="CSV with fname,summary.")],
    references: Annotated[Path, typer.Option(help="CSV with fname,summary (and summary1..N).")],
    tokenizer: Annotated[str, typer.Option(help="kiwi | mecab | whitespace")] = "kiwi",
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the scores as JSON.")] = None,
    per_sample: Annotated[Path | None, typer.Option(help="Write row-level scores as CSV.")] = None,
) -> None:
    """ROUGE-1/2/L F1 on Korean morphemes over several references, plus the foreign-script rate."""
    import csv
    import json

    from dialsum.metrics import evaluate_files, print_scores

    if tokenizer not in ("kiwi", "mecab", "whitespace"):
        raise DialsumError(f"--tokenizer {tokenizer}: expected kiwi, mecab or whitespace")
    result, rows = evaluate_files(predictions, references, tokenizer=tokenizer)
    print_scores(result, title=f"{predictions} vs {references}")
    if json_out:
        json_out.write_text(json.dumps(result, indent=2, ensure_ascii=False), encoding="utf-8")
    if per_sample and rows:
        with per_sample.open("w", encoding="utf-8", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0].keys()), lineterminator="\n")
            writer.writeheader()
            writer.writerows(rows)


@app.command()
def screen(
    models: Annotated[str, typer.Option(help="Comma-separated model paths or hub ids; 'lead' is the first-utterance baseline.")],
    data: Annotated[Path, typer.Option(help="Labeled dialogues (e.g. dev.csv).")],
    config: Annotated[Path | None, typer.Option(help="Config for prompt/generation settings.")] = None,
    set_: SetOption = None,
    limit: Annotated[int | None, typer.Option(help="Score only the first N dialogues.")] = None,
) -> None:
    """Zero-shot: predict and score several models without training, ranked, with a 'lead' floor."""
    from dialsum.run import screen as run_screen

    names = [name.strip() for name in models.split(",") if name.strip()]
    run_screen(names, data, config=_config(config, set_) if config else None, overrides=set_ or [], limit=limit)


@app.command()
def compare(
    run_dirs: Annotated[list[Path], typer.Argument(help="Run directories to compare side by side.")],
    output: Annotated[Path, typer.Option(help="Directory for compare.md, compare.json and the PNG plots.")] = Path("compare"),
) -> None:
    """The A/B table: differing settings, dev ROUGE, grad-norm spikes, speed; loss/grad-norm/LR plots."""
    from dialsum.report import compare_runs

    path = compare_runs(run_dirs, output)
    typer.echo(f"comparison written to {path}")


@app.command()
def inspect(
    config: Annotated[Path, typer.Argument(help="YAML run config.")],
    set_: SetOption = None,
    n: Annotated[int, typer.Option("--n", help="Examples to show.")] = 3,
    data: Annotated[str | None, typer.Option(help="Data file (default: data.train).")] = None,
) -> None:
    """Show rendered training examples (trained tokens highlighted) and dataset statistics."""
    from dialsum.inspection import inspect_data

    inspect_data(_config(config, set_), data_path=data, n=n)


@app.command()
def kfold(
    config: Annotated[Path, typer.Argument(help="YAML run config (data.train is split into folds).")],
    folds: Annotated[int, typer.Option(help="Number of folds K.")] = 5,
    fold: Annotated[int | None, typer.Option(help="Run only fold I (0..K-1), e.g. one fold per GPU job.")] = None,
    include_dev: Annotated[bool, typer.Option(help="Split train + dev into the folds (dev becomes training data).")]
    = False,
    set_: SetOption = None,
    output_dir: Annotated[Path | None, typer.Option(help="Parent directory (default runs/<config>-<time>-kfoldK).")]
    = None,
    resume: Annotated[bool, typer.Option(help="Continue unfinished folds from their last checkpoint.")] = False,
) -> None:
    """K runs on K folds: out-of-fold predictions and scores, test predictions from every fold, a summary table."""
    from dialsum.kfold import kfold as run_kfold

    run_kfold(_config(config, set_), folds, output_dir=output_dir, fold=fold, include_dev=include_dev, resume=resume,
              config_path=config)


@app.command()
def ensemble(
    sources: Annotated[list[Path] | None, typer.Argument(
        help="Candidate sources: fname,summary CSVs, multi-candidate CSVs (fname,candidate,summary), "
        "run directories or a kfold directory.")] = None,
    output: Annotated[Path, typer.Option(help="Output CSV fname,summary: the chosen candidate per dialogue.")] = ...,
    predictions: Annotated[list[Path] | None, typer.Option(help="A candidate source (repeatable), as SOURCES.")] = None,
    references: Annotated[Path | None, typer.Option(help="Score every source and the ensemble against these.")] = None,
    utility: Annotated[str, typer.Option(
        help="MBR utility: sum (R1+R2+RL), rouge1, rouge2, rougeL, or weights R2,RL,R1 such as 2,1,1.")] = "sum",
    length_percentile: Annotated[float | None, typer.Option(
        help="Leave out candidates longer (in morphemes) than this percentile of their dialogue's candidates.")] = None,
    scheme: Annotated[str, typer.Option(
        help="Morpheme tokenizer of the utility and the scores: kiwi | mecab | whitespace")] = "kiwi",
    split: Annotated[str, typer.Option(
        help="Which predictions of run/kfold directories: dev, test (submission.csv) or oof.")] = "dev",
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the report (wins, scores) as JSON.")] = None,
    choices: Annotated[Path | None, typer.Option(help="Write fname, winning source, expected utility as CSV.")] = None,
    submission: Annotated[Path | None, typer.Option(help="Also write the organizers' submission format here.")] = None,
) -> None:
    """MBR consensus: per dialogue, the candidate that agrees most (Korean ROUGE) with the other candidates."""
    from dialsum.ensemble import ensemble_files

    paths = [*(sources or []), *(predictions or [])]
    if not paths:
        raise DialsumError("ensemble: no candidate sources; pass prediction CSVs or run/kfold directories")
    ensemble_files(paths, output, references=references, utility=utility, length_percentile=length_percentile,
                   scheme=scheme, split=split, json_out=json_out, choices_out=choices, submission=submission)


@app.command("make-tiny-model")
def make_tiny_model(
    arch: Annotated[str, typer.Option(help="llama | qwen2 | qwen3 | bart")],
    output: Annotated[Path, typer.Option(help="Directory to write the model and tokenizer to.")],
) -> None:
    """Build a tiny random model + Korean byte-level BPE tokenizer locally (for tests and demos)."""
    from dialsum.tiny import make_tiny_model as build

    if arch not in ("llama", "qwen2", "qwen3", "bart"):
        raise DialsumError(f"--arch {arch}: expected one of llama, qwen2, qwen3, bart")
    if output.exists() and any(output.iterdir()):
        raise DialsumError(f"{output}: directory exists and is not empty; choose another --output")
    path = build(arch, output)
    typer.echo(f"tiny {arch} model written to {path}")


def main() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        app()
    except DialsumError as error:
        typer.secho(f"error: {error}", err=True, fg="red")
        sys.exit(2)
    except KeyboardInterrupt:
        typer.secho("interrupted", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
