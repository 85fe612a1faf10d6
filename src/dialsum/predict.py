"""Predicting a split: one way for `dialsum predict`, `dialsum run` (dev and test), kfold's held-out rows, and
the commands built on them (tune, serve).

`Predictor` is a model loaded once (HF weights in memory, or vLLM's engine) that summarises dialogues under any
config's decoding settings; `predict_split` turns one split into summaries plus what producing them took (what was
trimmed, what clean-up changed, the settings used, how many came out empty or with a foreign script);
`write_split` writes them in the form the output path asks for. `predict` is the command: resolve the model,
read the data, check the output, load, predict, write.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from dialsum.config import Config
from dialsum.data import Dialogue, load_dialogues
from dialsum.errors import ConfigError
from dialsum.generate import (
    VllmEngine,
    apply_cleanup,
    check_candidates,
    generate_candidates,
    generate_summaries,
)
from dialsum.models import InferenceSource, load_source, resolve_inference_source
from dialsum.prompt import resolve_topic_policy, topic_mismatch
from dialsum.scripts import has_foreign_script

__all__ = ["Predictor", "SplitPrediction", "predict", "predict_split", "write_split"]


@dataclass
class Predictor:
    """A model ready to summarise, loaded once: HF weights (`model`, `tokenizer`) or a vLLM engine. `config` is
    the source's config; each call may pass another one (the same model under other decoding settings)."""

    source: InferenceSource
    model: Any = None
    tokenizer: Any = None
    engine: VllmEngine | None = None

    @property
    def config(self) -> Config:
        return self.source.config

    @classmethod
    def load(cls, source: InferenceSource) -> "Predictor":
        if source.config.generation.backend == "vllm":
            return cls(source, engine=VllmEngine(source))
        model, tokenizer = load_source(source)
        return cls(source, model=model, tokenizer=tokenizer)

    @classmethod
    def from_path(cls, model_path: str | Path, config: Config | None = None, what: str = "--model") -> "Predictor":
        """A run directory, its model/, or any checkpoint (see models.resolve_inference_source); `what` is the
        flag that named it, for the error."""
        return cls.load(resolve_inference_source(model_path, config, what=what))

    def summarise(
        self,
        dialogues: Sequence[Dialogue],
        config: Config | None = None,
        *,
        label: str = "generate",
        progress: bool = True,
        info: dict | None = None,
        cleanup_counts: dict[str, int] | None = None,
        max_new_tokens: Sequence[int] | None = None,
    ) -> list[str]:
        """One cleaned summary per dialogue, in input order, under `config` (default: the source's)."""
        config = config or self.config
        if self.engine is not None:
            if max_new_tokens is not None:
                raise ConfigError("per-dialogue token limits need generation.backend=hf")
            return apply_cleanup(self.engine.generate(dialogues, config, progress=progress), config, cleanup_counts)
        return generate_summaries(
            self.model,
            self.tokenizer,
            dialogues,
            config,
            progress=progress,
            label=label,
            info=info,
            cleanup_counts=cleanup_counts,
            max_new_tokens=max_new_tokens,
        )


@dataclass
class SplitPrediction:
    """One split's summaries, in input order, and what producing them took."""

    ids: list[str]
    summaries: list[str]
    seconds: float
    trimmed: int = 0  # dialogues that lost turns to fit training.max_length
    turns_cut: int = 0
    cleanup: dict[str, int] = field(default_factory=dict)  # summaries each clean-up step changed
    turns_cut_per_row: list[int] = field(default_factory=list)  # per dialogue: turns cut from its end to fit
    cleaned_per_row: list[list[str]] = field(default_factory=list)  # per summary: the clean-up steps that changed it
    generation: dict | None = None  # the settings used and the checkpoint's that were ignored (generation.json)
    empty: int = 0
    foreign: int = 0  # summaries with a character of generation.forbidden_scripts


def predict_split(
    predictor: Predictor,
    dialogues: Sequence[Dialogue],
    config: Config | None = None,
    *,
    split: str = "generate",
    progress: bool = True,
    max_new_tokens: Sequence[int] | None = None,
) -> SplitPrediction:
    """Summarise one split (`split` names it in the progress bar and messages) and count what happened."""
    config = config or predictor.config
    info: dict[str, Any] = {}
    cleanup: dict[str, int] = {}
    started = time.perf_counter()
    summaries = predictor.summarise(
        dialogues,
        config,
        label=f"generate {split}" if split != "generate" else split,
        progress=progress,
        info=info,
        cleanup_counts=cleanup,
        max_new_tokens=max_new_tokens,
    )
    scripts = config.generation.forbidden_scripts
    return SplitPrediction(
        ids=[d.id for d in dialogues],
        summaries=summaries,
        seconds=time.perf_counter() - started,
        trimmed=info.get("trimmed", 0),
        turns_cut=info.get("turns_cut", 0),
        cleanup=cleanup,
        turns_cut_per_row=info.get("cuts", [0] * len(summaries)),
        cleaned_per_row=info.get("cleaned", [[] for _ in summaries]),
        generation=info.get("generation"),
        empty=sum(1 for s in summaries if not s.strip()),
        foreign=sum(1 for s in summaries if scripts and has_foreign_script(s, scripts)),
    )


def write_split(prediction: SplitPrediction, output: str | Path, source: str | Path, organizers: bool = False) -> Path:
    """Write a split's summaries in the form `output` asks for: for a DCS input and a .json/.jsonl output, the input
    written back with `output` filled in; otherwise `fname,summary`, or with `organizers` the organizers'
    submission CSV (an unnamed index column first)."""
    from dialsum.data import is_dcs, write_predictions
    from dialsum.submission import write_dcs_submission, write_submission

    output = Path(output)
    if is_dcs(output):
        write_dcs_submission(source, output, prediction.summaries)
    elif organizers:
        write_submission(output, prediction.ids, prediction.summaries)
    else:
        write_predictions(output, prediction.ids, prediction.summaries)
    return output


def _predict_candidates(
    source: InferenceSource, dialogues: Sequence[Dialogue], output_path: str | Path, n: int, progress: bool
) -> dict[str, Any]:
    from transformers import set_seed

    from dialsum.data import write_candidates

    config = source.config
    if config.generation.backend != "hf":
        raise ConfigError("--num-candidates needs generation.backend=hf")
    check_candidates(config, n)  # before the model loads
    model, tokenizer = load_source(source)
    set_seed(config.training.seed)  # sampled candidates are reproducible
    candidates = generate_candidates(model, tokenizer, dialogues, config, n, progress=progress)
    write_candidates(output_path, [d.id for d in dialogues], candidates)
    distinct = sum(len(set(c)) for c in candidates) / max(len(candidates), 1)
    print(
        f"wrote {n} candidates for each of {len(dialogues)} dialogues to {output_path} "
        f"({distinct:.1f} distinct per dialogue on average)"
    )
    return {"n": len(dialogues), "candidates": n, "distinct_per_dialogue": distinct, "output": str(output_path)}


def predict(
    model_path: str | Path,
    data_path: str | Path,
    output_path: str | Path,
    config: Config | None = None,
    overrides: list[str] | None = None,
    progress: bool = True,
    num_candidates: int = 1,
    overwrite: bool = False,
    inputs: Sequence[str | Path | None] = (),
) -> dict[str, Any]:
    """Summarise every dialogue of `data_path` into a `fname,summary` CSV at `output_path` (input ids,
    input order; an empty generation is an empty summary), or, for a DCS input and a .json/.jsonl output,
    into the input records with `output` filled in. Returns {n, empty, foreign, seconds, ...}.

    The output is checked before anything loads (writer.OutputPlan): never the data file or one of `inputs`
    (the config), never an existing file unless `overwrite`."""
    from dialsum.submission import check_output_path
    from dialsum.writer import OutputPlan

    started = time.perf_counter()
    OutputPlan([data_path, *inputs], overwrite).file(output_path, "--output")
    check_output_path(data_path, output_path)  # a DCS .json/.jsonl output needs a DCS input of that extension
    source = resolve_inference_source(model_path, config, overrides)
    # bad data fails before the model loads
    dialogues = load_dialogues(data_path, strip_whitespace=source.config.data.strip_whitespace)
    source.config, note = resolve_topic_policy(source.config, dialogues)  # a run's config is resolved already
    config = source.config
    for line in (note, topic_mismatch(config.prompt, dialogues, str(data_path))):
        if line:
            print(f"prompt: {line}", file=sys.stderr)
    if num_candidates > 1:  # fname,candidate,summary rows for `dialsum ensemble`
        return _predict_candidates(source, dialogues, output_path, num_candidates, progress)
    if config.generation.backend == "vllm":
        VllmEngine.check(config)  # before vLLM loads anything
    predictor = Predictor.load(source)
    prediction = predict_split(predictor, dialogues, config, progress=progress)
    write_split(prediction, output_path, data_path)
    stats = {
        "n": len(prediction.summaries),
        "empty": prediction.empty,
        "foreign": prediction.foreign,
        "seconds": round(time.perf_counter() - started, 2),
        "generate_seconds": round(prediction.seconds, 2),
        "output": str(output_path),
        "trimmed": prediction.trimmed,
        "generation": prediction.generation,
        "cleanup": prediction.cleanup,
    }
    if any(prediction.cleanup.values()):
        print("clean-up changed: " + ", ".join(f"{step} {n}" for step, n in prediction.cleanup.items() if n))
    noun = "summary" if stats["n"] == 1 else "summaries"
    print(
        f"wrote {stats['n']} {noun} to {output_path} ({stats['empty']} empty, {stats['foreign']} with a "
        f"foreign script) in {stats['seconds']:.1f}s ({stats['generate_seconds']:.1f}s generating)"
    )
    return stats
