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
def inspect(
    config: Annotated[Path, typer.Argument(help="YAML run config.")],
    set_: SetOption = None,
    n: Annotated[int, typer.Option("--n", help="Examples to show.")] = 3,
    data: Annotated[str | None, typer.Option(help="Data file (default: data.train).")] = None,
) -> None:
    """Show rendered training examples (trained tokens highlighted) and dataset statistics."""
    from dialsum.inspection import inspect_data

    inspect_data(_config(config, set_), data_path=data, n=n)


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
