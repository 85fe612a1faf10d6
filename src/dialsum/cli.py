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

from dialsum.errors import DialsumError, Interrupted
from dialsum.tiny import ARCHES as TINY_ARCHES

app = typer.Typer(
    help="Fine-tune, generate, score and compare Korean dialogue summarizers.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

SetOption = Annotated[
    list[str] | None,
    typer.Option("--set", help="Override a config key (repeatable), e.g. --set training.max_steps=100."),
]
# One flag, the same on every command that writes files a user names: replace outputs that exist (never an input).
OverwriteOption = Annotated[
    bool, typer.Option("--overwrite", help="Replace output files that already exist (never an input file).")
]


def _at_least(flag: str, value: float | None, low: float, high: float | None = None) -> None:
    """Numeric flags are checked here, before anything runs: `--world-size -2` printed negative hours."""
    import math

    if value is None:
        return
    if not math.isfinite(value) or value < low or (high is not None and value > high):
        bound = f"between {low:g} and {high:g}" if high is not None else f"at least {low:g}"
        raise DialsumError(f"{flag} must be {bound} (got {value:g})")


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
    import dialsum.train

    dialsum.train.train(
        _config(config, set_), config_path=config, output_dir=output_dir, resume=resume, overrides=set_ or []
    )


@app.command()
def plan(
    config: Annotated[Path, typer.Argument(help="YAML run config.")],
    set_: SetOption = None,
    model_dir: Annotated[Path | None, typer.Option(help="Folder with config.json and tokenizer (no weights).")] = None,
    data: Annotated[Path | None, typer.Option(help="Training file to measure (default: data.train).")] = None,
    train_examples: Annotated[int | None, typer.Option(help="Plan this many examples (the data's lengths).")] = None,
    world_size: Annotated[int, typer.Option(help="GPUs (data parallel).")] = 1,
    mfu: Annotated[float, typer.Option(help="Model FLOPs utilisation assumed for the hours.")] = 0.4,
    json_path: Annotated[Path | None, typer.Option("--json", help="Also write the plan as JSON.")] = None,
    overwrite: OverwriteOption = False,
) -> None:
    """What a run will cost before renting a GPU: steps, padding waste, memory per GPU, FLOPs and hours."""
    from dialsum.plan import build_plan, print_plan
    from dialsum.writer import OutputPlan, write_text

    _at_least("--world-size", world_size, 1)
    _at_least("--train-examples", train_examples, 1)
    _at_least("--mfu", mfu, 0.01, 1.0)
    OutputPlan([config, data], overwrite).file(json_path, "--json")
    result = build_plan(
        _config(config, set_),
        model_dir=model_dir,
        data=data,
        train_examples=train_examples,
        world_size=world_size,
        mfu=mfu,
    )
    print_plan(result)
    if json_path:
        write_text(json_path, result.to_json())


@app.command()
def run(
    config: Annotated[Path, typer.Argument(help="YAML run config.")],
    set_: SetOption = None,
    output_dir: Annotated[Path | None, typer.Option(help="Run directory (default runs/<config>-<time>).")] = None,
    resume: Annotated[bool, typer.Option(help="Continue the run in --output-dir from its last checkpoint.")] = False,
) -> None:
    """End to end: train, predict and score dev, predict test, write submission.csv and report.md."""
    import dialsum.run

    dialsum.run.run(
        _config(config, set_), config_path=config, output_dir=output_dir, resume=resume, overrides=set_ or []
    )


@app.command()
def predict(
    model: Annotated[str, typer.Option(help="Run directory, a run's model/ directory, or any HF model path.")],
    data: Annotated[Path, typer.Option(help="Dialogues to summarize (competition CSV or DCS JSON/JSONL).")],
    output: Annotated[
        Path,
        typer.Option(
            help="Output CSV fname,summary (input order); for a DCS input, a .json/.jsonl "
            "of the same extension is the input written back with 'output' filled in."
        ),
    ],
    config: Annotated[
        Path | None,
        typer.Option(
            help="Config (default: the run's config.yaml; for a bare model: the defaults, kind from its config.json); "
            "a fragment such as dialsum tune's best.yaml applies its keys over that config."
        ),
    ] = None,
    set_: SetOption = None,
    num_candidates: Annotated[
        int,
        typer.Option(
            help="Candidates per dialogue (beams with generation.num_beams >= N, or samples with "
            "generation.do_sample); "
            "N > 1 writes fname,candidate,summary for dialsum ensemble.",
            min=1,
        ),
    ] = 1,
    overwrite: OverwriteOption = False,
) -> None:
    """Generate summaries in batches, Korean-only by default, into a CSV in the input's order."""
    import dialsum.predict
    from dialsum.config import fragment_overrides

    fragment = fragment_overrides(config) if config else None  # tune's best.yaml: applied over the model's config
    dialsum.predict.predict(
        model,
        data,
        output,
        config=_config(config, set_) if config and fragment is None else None,
        overrides=[*(fragment or []), *(set_ or [])],
        num_candidates=num_candidates,
        overwrite=overwrite,
        inputs=[config],
    )


@app.command()
def tune(
    model: Annotated[str, typer.Argument(help="Run directory, a run's model/ directory, or any HF model path.")],
    data: Annotated[Path | None, typer.Option(help="Labeled dev dialogues (default: data.dev).")] = None,
    trials: Annotated[
        int | None,
        typer.Option(help="Trials in the study, all machines together (default 30; a grid: its size).", min=1),
    ] = None,
    space: Annotated[
        Path | None,
        typer.Option(help="SPACE.yaml: generation.* keys (lists or {low, high}), prompt.question/system lists."),
    ] = None,
    study: Annotated[str, typer.Option(help="Study name; the same name resumes it.")] = "tune",
    storage: Annotated[
        str | None, typer.Option(help="Optuna storage URL (default: sqlite in the output dir), e.g. postgresql://...")
    ] = None,
    timeout: Annotated[float | None, typer.Option(help="Stop starting trials after this many minutes.")] = None,
    output_dir: Annotated[
        Path | None, typer.Option(help="Where the study and reports go (default RUN_DIR/tune).")
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the tuning/held-out split and the sampler.")] = 0,
    config: Annotated[
        Path | None, typer.Option(help="Config, as for predict (default: the run's config.yaml).")
    ] = None,
    set_: SetOption = None,
    overwrite: OverwriteOption = False,
) -> None:
    """Search decoding settings on half of dev (Optuna), report the best on the held-out half; writes best.yaml."""
    from dialsum.tune import tune as run_tune

    run_tune(
        model,
        data,
        config=_config(config, set_) if config else None,
        overrides=set_ or [],
        trials=trials,
        space_path=space,
        study_name=study,
        storage=storage,
        timeout=timeout,
        output_dir=output_dir,
        seed=seed,
        overwrite=overwrite,
        inputs=[config],
    )


@app.command()
def evaluate(
    predictions: Annotated[Path, typer.Option(help="CSV with fname,summary, or a DCS submission .json/.jsonl.")],
    references: Annotated[Path, typer.Option(help="CSV with fname,summary (summary1..N), or the labelled DCS file.")],
    scheme: Annotated[
        str, typer.Option(help="kiwi (dialsum's scale) | dialogsum (DialogSum-Korean) | dcs (Korean_DCS)")
    ] = "kiwi",
    tokenizer: Annotated[
        str | None, typer.Option(help="Scheme kiwi only: kiwi | mecab | whitespace (default kiwi).")
    ] = None,
    bertscore_model: Annotated[
        str, typer.Option(help="Scheme dcs: BERTScore model, hub id or local copy.")
    ] = "bert-base-multilingual-cased",
    bertscore_layers: Annotated[
        int | None, typer.Option(help="Scheme dcs: BERTScore layer (needed for a local copy; mBERT uses 9).")
    ] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the scores as JSON.")] = None,
    per_sample: Annotated[Path | None, typer.Option(help="Write row-level scores as CSV.")] = None,
    html_out: Annotated[
        Path | None, typer.Option("--html", help="Write the error-analysis page (one self-contained HTML file).")
    ] = None,
    overwrite: OverwriteOption = False,
) -> None:
    """Score predictions the way a competition does (--scheme), plus the foreign-script rate."""
    from dialsum.evaluate import evaluate_scheme_files
    from dialsum.metrics import TOKENIZERS
    from dialsum.schemes import SCHEMES, print_scheme_scores
    from dialsum.writer import OutputPlan, write_dict_rows, write_json

    if scheme not in SCHEMES:
        raise DialsumError(f"--scheme {scheme}: expected one of {', '.join(SCHEMES)}")
    if tokenizer is not None and tokenizer not in TOKENIZERS:
        raise DialsumError(f"--tokenizer {tokenizer}: expected one of {', '.join(TOKENIZERS)}")
    if tokenizer is not None and scheme != "kiwi":
        raise DialsumError(f"--tokenizer applies to --scheme kiwi only; --scheme {scheme} fixes its analyzer (Mecab)")
    outputs = OutputPlan([predictions, references], overwrite)
    outputs.file(json_out, "--json")
    outputs.file(per_sample, "--per-sample")
    outputs.file(html_out, "--html")
    result, rows = evaluate_scheme_files(
        predictions,
        references,
        scheme=scheme,
        tokenizer=tokenizer or "kiwi",
        bertscore_model=bertscore_model,
        bertscore_layers=bertscore_layers,
    )
    print_scheme_scores(result, title=f"{predictions} vs {references}")
    if json_out:
        write_json(json_out, result)
    if per_sample and rows:
        write_dict_rows(per_sample, rows)
    if html_out:
        from dialsum.htmlreport import write_evaluate_html

        write_evaluate_html(html_out, result, rows, references, tokenizer or "kiwi")
        typer.echo(f"error-analysis page: {html_out}")


@app.command()
def screen(
    models: Annotated[
        str, typer.Option(help="Comma-separated model paths or hub ids; 'lead' is the first-utterance baseline.")
    ],
    data: Annotated[Path, typer.Option(help="Labeled dialogues (e.g. dev.csv).")],
    config: Annotated[
        Path | None,
        typer.Option(help="Config for the models that are not run directories (a run uses its own config.yaml)."),
    ] = None,
    set_: SetOption = None,
    limit: Annotated[int | None, typer.Option(help="Score only the first N dialogues.")] = None,
) -> None:
    """Predict and score several models or runs, ranked per scheme, with a 'lead' floor."""
    import dialsum.run

    names = [name.strip() for name in models.split(",") if name.strip()]
    if not names:
        raise DialsumError(f"--models {models!r}: no model named; give comma-separated paths, hub ids or 'lead'")
    _at_least("--limit", limit, 1)
    dialsum.run.screen(names, data, config=_config(config, set_) if config else None, overrides=set_ or [], limit=limit)


@app.command()
def compare(
    run_dirs: Annotated[list[Path], typer.Argument(help="Run directories to compare side by side.")],
    output: Annotated[
        Path | None,
        typer.Option(
            help="Directory for compare.md, compare.json and the PNG plots "
            "(default: compare-<time> beside the first run)."
        ),
    ] = None,
    overwrite: OverwriteOption = False,
) -> None:
    """The A/B table: differing settings, dev ROUGE, grad-norm spikes, speed; loss/grad-norm/LR plots."""
    from dialsum.compare import compare_runs

    path = compare_runs(run_dirs, output, overwrite=overwrite)
    typer.echo(f"comparison written to {path}")


@app.command()
def inspect(
    config: Annotated[Path | None, typer.Argument(help="YAML run config (optional with --model and --data).")] = None,
    set_: SetOption = None,
    n: Annotated[int, typer.Option("--n", help="Examples to show.")] = 3,
    data: Annotated[str | None, typer.Option(help="Data file (default: data.train).")] = None,
    model: Annotated[
        str | None,
        typer.Option(
            help="Model or tokenizer folder to render with (e.g. a real tokenizer in ../shared/models); "
            "its kind comes from its config.json."
        ),
    ] = None,
) -> None:
    """Show rendered training examples (trained tokens highlighted) and dataset statistics."""
    from dialsum.config import config_from_dict
    from dialsum.inspection import inspect_data

    if config is None and model is None:
        raise DialsumError("inspect needs a CONFIG, or --model (with --data)")
    _at_least("--n", n, 0)
    resolved = _config(config, set_) if config else config_from_dict({"model": {"name_or_path": model}}, set_)
    inspect_data(resolved, data_path=data, n=n, model=model)


@app.command("config-keys")
def config_keys(
    section: Annotated[
        str | None, typer.Argument(help="Only this section (model, data, prompt, training, ...).")
    ] = None,
    markdown: Annotated[bool, typer.Option(help="Print a Markdown table (the README's config reference).")] = False,
) -> None:
    """Every config key with its type, default and what it does."""
    from dialsum.config import config_fields, config_reference_markdown

    rows = [row for row in config_fields() if section is None or row["key"].split(".")[0] == section]
    if not rows:
        sections = sorted({row["key"].split(".")[0] for row in config_fields()})
        raise DialsumError(f"config-keys {section}: no such section; sections: {', '.join(sections)}")
    if markdown:
        typer.echo(config_reference_markdown(rows), nl=False)
        return
    print_config_keys(rows)


def print_config_keys(rows: list[dict[str, str]], console=None) -> None:
    """A table where the terminal is wide enough for a readable description column (140 columns), else one
    block per key: the key, its type and default on a line, the description beneath, wrapped at whole words."""
    from rich.console import Console
    from rich.padding import Padding
    from rich.table import Table
    from rich.text import Text

    console = console or Console()
    if console.width >= 140:
        table = Table(show_header=True, header_style="bold", show_lines=False)
        table.add_column("key", no_wrap=True)
        table.add_column("type", overflow="fold", max_width=20)
        table.add_column("default", overflow="fold", max_width=20)
        table.add_column("description", ratio=1, min_width=40)
        for row in rows:
            table.add_row(row["key"], row["type"], row["default"], row["description"])
        console.print(table)
        return
    for row in rows:
        head = Text(row["key"], style="bold")
        head.append(f"  {row['type']}  default ", style="dim")
        head.append(row["default"])
        console.print(head)
        console.print(Padding(Text(row["description"]), (0, 0, 1, 4)))


@app.command()
def augment(
    config: Annotated[Path, typer.Argument(help="YAML run config (data.train: the sources; augment: the endpoint).")],
    recipe: Annotated[
        str, typer.Option(help="paraphrase, rewrite-summary, synthetic (configs/augment/*.yaml, a path), speaker-swap.")
    ],
    n: Annotated[int, typer.Option("--n", help="Examples to make (requests to send, less what the cache holds).")],
    output: Annotated[Path, typer.Option(help="Augmented competition CSV (with a source column).")],
    endpoint: Annotated[str | None, typer.Option(help="OpenAI-compatible base URL (default augment.endpoint).")] = None,
    model: Annotated[str | None, typer.Option(help="Model name (default augment.model).")] = None,
    api_key_env: Annotated[
        str | None, typer.Option(help="Environment variable holding the API key (default augment.api_key_env).")
    ] = None,
    concurrency: Annotated[int | None, typer.Option(help="Requests in flight (default augment.concurrency).")] = None,
    rpm: Annotated[float | None, typer.Option(help="Requests per minute (default augment.rpm).")] = None,
    dry_run: Annotated[
        bool, typer.Option(help="Print the first rendered request and the job's token estimate; send nothing.")
    ] = False,
    set_: SetOption = None,
    overwrite: OverwriteOption = False,
) -> None:
    """More training data from a teacher model: validated, cached (nothing paid twice), leak-checked."""
    import dialsum.augment

    dialsum.augment.augment(
        _config(config, set_),
        recipe,
        n,
        output,
        endpoint=endpoint,
        model=model,
        api_key_env=api_key_env,
        concurrency=concurrency,
        rpm=rpm,
        dry_run=dry_run,
        overwrite=overwrite,
    )


@app.command()
def kfold(
    config: Annotated[Path, typer.Argument(help="YAML run config (data.train is split into folds).")],
    folds: Annotated[int, typer.Option(help="Number of folds K.")] = 5,
    fold: Annotated[int | None, typer.Option(help="Run only fold I (0..K-1), e.g. one fold per GPU job.")] = None,
    include_dev: Annotated[
        bool, typer.Option(help="Split train + dev into the folds (dev becomes training data).")
    ] = False,
    set_: SetOption = None,
    output_dir: Annotated[
        Path | None, typer.Option(help="Parent directory (default: under runs/, <config>-<time>-kfoldK).")
    ] = None,
    resume: Annotated[bool, typer.Option(help="Continue unfinished folds from their last checkpoint.")] = False,
) -> None:
    """K runs on K folds: out-of-fold predictions and scores, test predictions from every fold, a summary table."""
    import dialsum.kfold

    dialsum.kfold.kfold(
        _config(config, set_),
        folds,
        output_dir=output_dir,
        fold=fold,
        include_dev=include_dev,
        resume=resume,
        config_path=config,
    )


@app.command()
def ensemble(
    sources: Annotated[
        list[Path] | None,
        typer.Argument(
            help="Candidate sources: fname,summary CSVs, multi-candidate CSVs (fname,candidate,summary), "
            "run directories or a kfold directory."
        ),
    ] = None,
    output: Annotated[Path, typer.Option(help="Output CSV fname,summary: the chosen candidate per dialogue.")] = ...,
    predictions: Annotated[list[Path] | None, typer.Option(help="A candidate source (repeatable), as SOURCES.")] = None,
    references: Annotated[Path | None, typer.Option(help="Score every source and the ensemble against these.")] = None,
    utility: Annotated[
        str,
        typer.Option(help="MBR utility: sum (R1+R2+RL), rouge1, rouge2, rougeL, or weights R2,RL,R1 such as 2,1,1."),
    ] = "sum",
    length_percentile: Annotated[
        float | None,
        typer.Option(
            help="Leave out candidates longer (in morphemes) than this percentile of their dialogue's candidates."
        ),
    ] = None,
    scheme: Annotated[
        str,
        typer.Option(help="Scoring recipe of the utility's morphemes and the scores: kiwi | dialogsum | dcs."),
    ] = "kiwi",
    tokenizer: Annotated[
        str, typer.Option(help="Analyzer of --scheme kiwi: kiwi | mecab | whitespace (the others fix Mecab).")
    ] = "kiwi",
    split: Annotated[
        str, typer.Option(help="Which predictions of run/kfold directories: dev, test (submission.csv) or oof.")
    ] = "dev",
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the report (wins, scores) as JSON.")] = None,
    choices: Annotated[Path | None, typer.Option(help="Write fname, winning source, expected utility as CSV.")] = None,
    submission: Annotated[Path | None, typer.Option(help="Also write the organizers' submission format here.")] = None,
    overwrite: OverwriteOption = False,
) -> None:
    """MBR consensus: per dialogue, the candidate that agrees most (Korean ROUGE) with the other candidates."""
    from dialsum.ensemble import ensemble_files

    paths = [*(sources or []), *(predictions or [])]
    if not paths:
        raise DialsumError("ensemble: no candidate sources; pass prediction CSVs or run/kfold directories")
    ensemble_files(
        paths,
        output,
        references=references,
        utility=utility,
        length_percentile=length_percentile,
        scheme=scheme,
        tokenizer=tokenizer,
        split=split,
        json_out=json_out,
        choices_out=choices,
        submission=submission,
        overwrite=overwrite,
    )


@app.command()
def export(
    run_dir: Annotated[Path, typer.Argument(help="A finished run directory (config.yaml + model/).")],
    output: Annotated[Path, typer.Option(help="Export folder (written atomically).")],
    merge: Annotated[
        bool,
        typer.Option("--merge/--no-merge", help="Merge a LoRA adapter into its base (default), or ship the adapter."),
    ] = True,
    push_to_hub: Annotated[
        str | None,
        typer.Option(help="Also upload the export to this Hub repo (OWNER/NAME); token from HF_TOKEN/login."),
    ] = None,
    private: Annotated[bool, typer.Option(help="With --push-to-hub: create the repo private.")] = False,
    dry_run: Annotated[
        bool, typer.Option(help="With --push-to-hub: list the files that would go up; upload none.")
    ] = False,
    overwrite: OverwriteOption = False,
) -> None:
    """A run as a model plain transformers loads: merged safetensors (parity-checked), tokenizer and chat template,
    generation_config.json from the run, a model card; optionally pushed to the Hugging Face Hub."""
    from dialsum.export import export as run_export

    if (private or dry_run) and push_to_hub is None:
        raise DialsumError("--private and --dry-run apply to --push-to-hub REPO, which was not given")
    run_export(
        run_dir, output, merge=merge, overwrite=overwrite, push_repo=push_to_hub, private=private, dry_run=dry_run
    )


@app.command()
def serve(
    model: Annotated[Path, typer.Argument(help="A run directory or a `dialsum export` folder.")],
    host: Annotated[
        str, typer.Option(help="Interface to bind; 0.0.0.0 exposes the server to the network.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    backend: Annotated[str, typer.Option(help="hf (transformers, CPU or GPU) or vllm (vLLM's server, CUDA).")] = "hf",
    batch_window_ms: Annotated[
        float, typer.Option(help="Requests arriving within this window share one generate call (0: one at a time).")
    ] = 10.0,
    max_batch: Annotated[int, typer.Option(help="Most dialogues one /v1/summarize request may carry.")] = 32,
) -> None:
    """An HTTP server: POST /v1/summarize, OpenAI-compatible /v1/chat/completions and /v1/models, GET /health, and a
    web page at /."""
    from dialsum.serve import serve as run_serve

    run_serve(model, host=host, port=port, backend=backend, batch_window_ms=batch_window_ms, max_batch=max_batch)


@app.command("make-tiny-model")
def make_tiny_model(
    output: Annotated[Path, typer.Option(help="Directory to write the model and tokenizer to.")],
    arch: Annotated[
        str | None, typer.Option(help=f"{' | '.join(TINY_ARCHES)} (default with --tokenizer: from its config.json).")
    ] = None,
    tokenizer: Annotated[
        Path | None,
        typer.Option(
            help="A real tokenizer folder (e.g. ../shared/models/llama-3.2-korean-bllossom-3b) to build around."
        ),
    ] = None,
) -> None:
    """Build a tiny random model + Korean byte-level BPE tokenizer locally (for tests and demos), or a tiny
    random model around a real tokenizer (--tokenizer)."""
    from dialsum.tiny import arch_of
    from dialsum.tiny import make_tiny_model as build

    if tokenizer is not None:
        if not (tokenizer / "tokenizer_config.json").is_file():
            raise DialsumError(f"--tokenizer {tokenizer}: no tokenizer_config.json there")
        if arch is None:
            try:
                arch = arch_of(tokenizer)
            except ValueError as error:
                raise DialsumError(f"--tokenizer {error}") from None
    if arch not in TINY_ARCHES:
        raise DialsumError(f"--arch {arch}: expected one of {', '.join(TINY_ARCHES)}")
    if output.exists() and any(output.iterdir()):
        raise DialsumError(f"{output}: directory exists and is not empty; choose another --output")
    path = build(arch, output, tokenizer_dir=tokenizer)
    typer.echo(f"tiny {arch} model written to {path}" + (f" around the tokenizer of {tokenizer}" if tokenizer else ""))


def main() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        app()
    except DialsumError as error:
        typer.secho(f"error: {error}", err=True, fg="red")
        sys.exit(2)
    except Interrupted as interrupted:  # on a line of its own: a progress bar may have left the cursor mid-line
        typer.secho("\n" + str(interrupted), err=True, fg="yellow")
        sys.exit(130)
    except KeyboardInterrupt:
        typer.secho("interrupted (nothing half-written: every output is written atomically)", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
