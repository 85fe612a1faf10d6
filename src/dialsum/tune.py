"""`dialsum tune`: search decoding settings on dev with Optuna, and report the winner on rows it never saw.

Dev is split once, seeded and stratified by topic, into a tuning half (what trials optimise) and a held-out half
(what the best trial and the untuned config are finally scored on); the split lives in the study, so every trial,
resume and machine uses the same rows. The model loads once; each trial predicts exactly as `dialsum predict` would
(predict.predict_split with the trial's settings over the run's config) and is scored under `evaluation.scheme`.
A trial first generates a slice of whole batches and reports it to the median pruner; the rest follows only if it
survives, and the two calls generate what one call would, so `predict --config best.yaml` reproduces the score.
Identical settings (by hash) are never generated twice, across resumes and machines alike.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from dialsum.config import Config
from dialsum.data import Dialogue, load_dialogues
from dialsum.errors import ConfigError, DataError
from dialsum.rundir import CONFIG_FILE, TUNE_DIR, TUNE_OUTPUTS, TUNE_STUDY_FILE
from dialsum.schemes import get_scheme, score_dialogues
from dialsum.tune_space import Space, apply_settings, canonical, default_space, load_space, settings_hash

__all__ = ["TuneResult", "split_rows", "tune"]

DEFAULT_TRIALS = 30
SLICE = 0.25  # share of the tuning rows a trial generates before the pruner sees it
WARN_RATIO = 2.0  # warn when the tuning gain is more than this many times the held-out gain


@dataclass
class TuneResult:
    output_dir: Path
    study_name: str
    storage: str
    scheme: dict[str, str]
    split: dict[str, Any]
    best: dict[str, Any]  # number, settings, tuning score
    untuned: dict[str, Any]  # tuning and held-out score of the run's own settings
    heldout: dict[str, Any]  # best trial's held-out score, interval, paired difference with untuned
    warning: str | None
    trials: list[dict[str, Any]] = field(default_factory=list)
    space: list[dict[str, Any]] = field(default_factory=list)
    grid: bool = False
    fragment: dict[str, Any] = field(default_factory=dict)  # best.yaml's sections
    base_file: Path | None = None  # the run's config.yaml, which best.yaml names as its base


def split_rows(dialogues: Sequence[Dialogue], seed: int) -> dict[str, Any]:
    """The tuning and held-out ids: 50/50 within each topic, seeded (uncertainty.split_halves)."""
    from dialsum.uncertainty import split_halves

    public = split_halves([d.topic for d in dialogues], seed)
    return {
        "seed": seed,
        "tuning": [d.id for d, p in zip(dialogues, public) if p],
        "heldout": [d.id for d, p in zip(dialogues, public) if not p],
    }


def _rows(dialogues: Sequence[Dialogue], ids: list[str], data: Path) -> list[Dialogue]:
    by_id = {d.id: d for d in dialogues}
    missing = [i for i in ids if i not in by_id]
    if missing:
        raise DataError(
            f"{data}: lacks {len(missing)} rows of the study's split (e.g. fname {missing[0]!r}); tune on the data "
            "the study started with, or start another --study"
        )
    return [by_id[i] for i in ids]


class _Trials:
    """The model, the rows and the study's cache: what every trial shares."""

    def __init__(self, predictor, config: Config, tuning: list[Dialogue], heldout: list[Dialogue], progress: bool):
        self.predictor, self.config, self.progress = predictor, config, progress
        self.rows = {"tuning": tuning, "heldout": heldout}
        self.scheme = get_scheme(config.evaluation.scheme)
        self._slices: dict[str, tuple[list[int], list[int]]] = {}

    def score(self, summaries: list[str], dialogues: list[Dialogue], config: Config) -> dict[str, Any]:
        result, rows = score_dialogues(summaries, dialogues, config.evaluation, config.generation.forbidden_scripts)
        key = self.scheme.rank_key(result)
        row_key = (result.get("interval") or {}).get("key", key)
        return {
            "value": float(result[key] or 0.0),
            "rows": [float(r.get(row_key) or 0.0) for r in rows],
            "scores": {k: result.get(k) for k in self.scheme.keys if result.get(k) is not None},
        }

    def generate(self, config: Config, dialogues: list[Dialogue], label: str) -> tuple[list[str], float]:
        from transformers import set_seed

        from dialsum.predict import predict_split

        set_seed(config.training.seed)  # sampled settings are reproducible too
        prediction = predict_split(self.predictor, dialogues, config, split=label, progress=self.progress)
        return prediction.summaries, prediction.seconds

    def slices(self, config: Config) -> tuple[list[int], list[int]]:
        """The pruning slice and the rest of the tuning rows, each made of whole batches of the one-call
        prediction (predict_split sorts by input length, longest first, then batches), every k-th batch in the
        slice so it spans all lengths. Same batches, same summaries: the split costs nothing in exactness."""
        from dialsum.encode import encode_inference_inputs

        rows = self.rows["tuning"]
        key = json.dumps(
            [config.prompt.model_dump(mode="json"), config.training.max_length, config.generation.batch_size]
        )
        if key not in self._slices:
            step = round(1 / SLICE)
            if self.predictor.engine is not None:  # vLLM schedules its own batches
                first = list(range(0, len(rows), step))
            else:
                inputs, _ = encode_inference_inputs(self.predictor.tokenizer, rows, config, config.model.kind)
                order = sorted(range(len(rows)), key=lambda i: len(inputs[i]), reverse=True)
                size = config.generation.batch_size
                batches = [order[s : s + size] for s in range(0, len(order), size)]
                first = sorted(i for batch in batches[::step] for i in batch) if len(batches) > 1 else []
            self._slices[key] = (first, sorted(set(range(len(rows))) - set(first)))
        return self._slices[key]

    def evaluate(self, study, settings: dict[str, Any], half: str) -> dict[str, Any]:
        """A full evaluation of one half, cached in the study under the settings' hash."""
        config = apply_settings(self.config, settings)
        name = f"eval:{half}:{settings_hash(canonical(settings, self.config))}"
        cached = study.user_attrs.get(name)
        if cached is None:
            summaries, seconds = self.generate(config, self.rows[half], f"{half} ({len(self.rows[half])} rows)")
            cached = {**self.score(summaries, self.rows[half], config), "seconds": seconds}
            study.set_user_attr(name, cached)
        return cached

    def objective(self, space: Space, grid: bool) -> Callable:
        import optuna

        def run(trial) -> float:
            started = time.perf_counter()
            settings = space.suggest(trial, grid)
            digest = settings_hash(canonical(settings, self.config))
            trial.set_user_attr("settings", settings)
            trial.set_user_attr("hash", digest)
            cached = trial.study.user_attrs.get(f"eval:tuning:{digest}")
            if cached is not None:
                trial.set_user_attr("cached", True)
                trial.set_user_attr("rows_generated", 0)
                return cached["value"]
            pruned = [t for t in trial.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.PRUNED,))]
            if any(t.user_attrs.get("hash") == digest for t in pruned):
                trial.set_user_attr("cached", True)
                trial.set_user_attr("rows_generated", 0)
                raise optuna.TrialPruned()
            config = apply_settings(self.config, settings)
            rows = self.rows["tuning"]
            first, rest = self.slices(config)
            summaries = [""] * len(rows)
            generated = 0
            if first and rest:
                part, _ = self.generate(config, [rows[i] for i in first], f"trial {trial.number} slice")
                for i, text in zip(first, part):
                    summaries[i] = text
                generated = len(first)
                trial.report(self.score(part, [rows[i] for i in first], config)["value"], 0)
                if trial.should_prune():
                    trial.set_user_attr("rows_generated", generated)
                    trial.set_user_attr("seconds", time.perf_counter() - started)
                    raise optuna.TrialPruned()
            part, _ = self.generate(config, [rows[i] for i in rest or first], f"trial {trial.number}")
            for i, text in zip(rest or first, part):
                summaries[i] = text
            scored = self.score(summaries, rows, config)
            seconds = time.perf_counter() - started
            trial.study.set_user_attr(f"eval:tuning:{digest}", {**scored, "seconds": seconds})
            trial.set_user_attr("rows_generated", len(rows))
            trial.set_user_attr("seconds", seconds)
            trial.set_user_attr("scores", scored["scores"])
            return scored["value"]

        return run


def _base_settings(space: Space, config: Config) -> dict[str, Any]:
    """The untuned config's values of the searched keys."""
    return {key: getattr(getattr(config, key.split(".")[0]), key.split(".", 1)[1]) for key in space.keys}


def _storage(url: str):
    import warnings

    import optuna

    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)  # the heartbeat: stale trials
    if url.startswith("sqlite"):  # one writer at a time; wait for the lock instead of failing
        return optuna.storages.RDBStorage(
            url, engine_kwargs={"connect_args": {"timeout": 60}}, heartbeat_interval=60, grace_period=180
        )
    return optuna.storages.RDBStorage(url, heartbeat_interval=60, grace_period=180)


def _existing_study(url: str, name: str, default_file: Path | None):
    """The study already in storage (resume), or None; reads only, so a bad invocation writes nothing."""
    import optuna

    if default_file is not None and not default_file.is_file():
        return None
    if name not in optuna.study.get_all_study_names(_storage(url)):
        return None
    return optuna.load_study(study_name=name, storage=_storage(url))


def _check_resume(study, space: Space, base: str, name: str) -> None:
    if study.user_attrs.get("space") != space.to_dict():
        raise ConfigError(
            f"--study {name}: the study was started with another space; tune it with that space, or start another "
            "--study"
        )
    if study.user_attrs.get("base") != base:
        raise ConfigError(f"--study {name}: the study was started on another model or config; start another --study")


def tune(
    model_path: str | Path,
    data_path: str | Path | None = None,
    *,
    config: Config | None = None,
    overrides: Sequence[str] = (),
    trials: int | None = None,
    space_path: str | Path | None = None,
    study_name: str = "tune",
    storage: str | None = None,
    timeout: float | None = None,
    output_dir: str | Path | None = None,
    seed: int = 0,
    overwrite: bool = False,
    progress: bool = True,
    callbacks: Sequence[Callable] = (),
    inputs: Sequence[str | Path | None] = (),
) -> TuneResult:
    """Tune, then write trials.csv, best.yaml, tune.md, split.csv and the plots (tune_report). `trials` is the
    study's total (finished trials count, wherever they ran); `timeout` is in minutes."""
    import optuna

    from dialsum.models import resolve_inference_source
    from dialsum.predict import Predictor
    from dialsum.prompt import resolve_topic_policy
    from dialsum.tune_report import write_outputs
    from dialsum.writer import OutputPlan

    source = resolve_inference_source(model_path, config, list(overrides))
    if not (data_path or source.config.data.dev):
        raise DataError("tune needs --data DEV.csv (the config's data.dev names none)")
    data_path = Path(data_path or source.config.data.dev)
    if not data_path.is_file():
        raise DataError(f"--data {data_path}: no such file")
    dialogues = load_dialogues(data_path)
    unlabeled = [d.id for d in dialogues if not d.references]
    if unlabeled:
        raise DataError(f"{data_path}: fname {unlabeled[0]!r} has no reference summary; tune needs labeled dev rows")
    if len(dialogues) < 4:
        raise DataError(f"{data_path}: {len(dialogues)} dialogues; tune needs at least 4 (two per half)")
    source.config, _ = resolve_topic_policy(source.config, dialogues)
    base_config = source.config
    space = load_space(space_path, base_config) if space_path else default_space(base_config)
    if output_dir is None:
        if source.run_dir is None:
            raise ConfigError(f"{model_path}: not a run directory; pass --output-dir for the study and its reports")
        output_dir = source.run_dir / TUNE_DIR
    output_dir = Path(output_dir)
    default_file = None if storage else output_dir / TUNE_STUDY_FILE
    url = storage or f"sqlite:///{default_file.resolve()}"
    base = settings_hash({"model": str(source.model_dir), "config": {**base_config.to_dict(), "logging": None}})
    existing = _existing_study(url, study_name, default_file)
    if existing is not None:
        _check_resume(existing, space, base, study_name)
    plan = OutputPlan([data_path, space_path, *inputs], overwrite or existing is not None)
    for name in TUNE_OUTPUTS:
        plan.file(output_dir / name, "--output-dir")
    split = (
        existing.user_attrs["split"]
        if existing is not None
        else {**split_rows(dialogues, seed), "data": str(data_path)}
    )
    tuning, heldout = _rows(dialogues, split["tuning"], data_path), _rows(dialogues, split["heldout"], data_path)

    if base_config.generation.backend == "vllm":
        from dialsum.generate import VllmEngine

        VllmEngine.check(base_config)
    predictor = Predictor.load(source)
    output_dir.mkdir(parents=True, exist_ok=True)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    grid = space.grid()
    sampler = optuna.samplers.GridSampler(grid, seed=seed) if grid else optuna.samplers.TPESampler(seed=seed)
    pruner = optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=0)
    study = optuna.create_study(
        storage=_storage(url), sampler=sampler, pruner=pruner, study_name=study_name, direction="maximize",
        load_if_exists=True,
    )  # fmt: skip
    if "split" not in study.user_attrs:
        for key, value in (("split", split), ("space", space.to_dict()), ("base", base)):
            study.set_user_attr(key, value)
        study.set_user_attr("scheme", base_config.evaluation.scheme)
    else:
        _check_resume(study, space, base, study_name)  # another machine may have created it meanwhile
        if study.user_attrs["split"] != split:  # ... with its split: every machine tunes the same rows
            split = study.user_attrs["split"]
            tuning = _rows(dialogues, split["tuning"], data_path)
            heldout = _rows(dialogues, split["heldout"], data_path)
    work = _Trials(predictor, base_config, tuning, heldout, progress)
    untuned = _base_settings(space, base_config)
    work.evaluate(study, untuned, "tuning")

    total = trials or (space.combinations() if grid else DEFAULT_TRIALS)
    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    remaining = total - len(study.get_trials(deepcopy=False, states=states))
    if remaining > 0:
        from tqdm.auto import tqdm

        bar = tqdm(total=remaining, desc=f"study {study_name}", unit="trial", disable=not progress, file=sys.stderr)

        def show(study, trial) -> None:
            bar.update(1)
            if any(t.state == optuna.trial.TrialState.COMPLETE for t in study.get_trials(deepcopy=False)):
                bar.set_postfix(best=f"{study.best_value:.4f}", trial=study.best_trial.number)

        try:
            study.optimize(
                work.objective(space, grid is not None),
                n_trials=remaining,
                timeout=timeout * 60 if timeout else None,
                callbacks=[optuna.study.MaxTrialsCallback(total, states=states), show, *callbacks],
            )
        finally:
            bar.close()
    base_file = source.run_dir / CONFIG_FILE if source.run_dir is not None else None
    result = _finish(study, work, space, untuned, output_dir, url, grid is not None)
    result.base_file = base_file
    write_outputs(result)
    return result


def _finish(study, work: _Trials, space: Space, untuned: dict, output_dir: Path, url: str, grid: bool) -> TuneResult:
    import optuna

    from dialsum.length import with_length_rule
    from dialsum.uncertainty import paired_bootstrap

    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if not complete:
        raise ConfigError(f"study {study.study_name}: no trial completed; run more --trials")
    best = study.best_trial
    settings = best.user_attrs["settings"]
    base_tuning = work.evaluate(study, untuned, "tuning")
    base_held, best_held = work.evaluate(study, untuned, "heldout"), work.evaluate(study, settings, "heldout")
    from dialsum.uncertainty import bootstrap_interval

    tuning_gain = best.value - base_tuning["value"]
    held_gain = best_held["value"] - base_held["value"]
    warning = None
    if tuning_gain > 0 and held_gain * WARN_RATIO < tuning_gain:
        warning = (
            f"the tuning gain (+{tuning_gain:.4f}) is more than {WARN_RATIO:g}x the held-out gain ({held_gain:+.4f}): "
            "the search fitted the tuning rows; trust the held-out number"
        )
        print(f"warning: {warning}", file=sys.stderr)
    tuned = apply_settings(work.config, settings)
    fragment: dict[str, dict[str, Any]] = {}
    for key, value in canonical(settings, work.config).items():
        section, name = key.split(".", 1)
        fragment.setdefault(section, {})[name] = value
    if tuned.generation.max_new_tokens == "auto" and tuned.generation.length_rule is None:
        fragment["generation"]["length_rule"] = with_length_rule(tuned, work.predictor.tokenizer).generation.length_rule
    return TuneResult(
        output_dir=output_dir,
        study_name=study.study_name,
        storage=url,
        scheme={"name": work.scheme.name, "label": work.scheme.headline_label},
        split={  # the rows the trials really used
            **study.user_attrs["split"],
            "tuning": [d.id for d in work.rows["tuning"]],
            "heldout": [d.id for d in work.rows["heldout"]],
        },
        best={"number": best.number, "settings": settings, "tuning": best.value},
        untuned={"settings": untuned, "tuning": base_tuning["value"], "heldout": base_held["value"]},
        heldout={
            "best": best_held["value"],
            "interval": bootstrap_interval(best_held["rows"]),
            "difference": paired_bootstrap(base_held["rows"], best_held["rows"]),
            "tuning_gain": tuning_gain,
            "heldout_gain": held_gain,
        },
        warning=warning,
        trials=[_trial_row(t) for t in study.get_trials(deepcopy=False)],
        space=space.to_dict(),
        grid=grid,
        fragment=fragment,
    )


def _trial_row(trial) -> dict[str, Any]:
    seconds = trial.user_attrs.get("seconds")
    return {
        "number": trial.number,
        "state": trial.state.name.lower(),
        "value": trial.value,
        "settings": trial.user_attrs.get("settings", {}),
        "hash": trial.user_attrs.get("hash"),
        "seconds": seconds,
        "cached": bool(trial.user_attrs.get("cached", False)),
        "rows_generated": trial.user_attrs.get("rows_generated"),
        "slice_value": trial.intermediate_values.get(0),
    }
