"""Benchmark `dialsum tune`: one trial's overhead over a plain predict of the same rows, and the work pruning saves.

Part 1 (target: a trial within 10 % of predict + score): the same tuning rows, the same settings, interleaved
repeats, medians: (a) `predict_split` alone, as `dialsum predict` runs; (b) that plus scoring under the scheme, what
a hand-written search loop must do at least; (c) one Optuna trial (SQLite storage, the pruning slice predicted and
scored first, then the rest, the scores, the bookkeeping). Each trial gets settings no earlier one had, so the
settings cache never answers it.
Part 2: a TPE study of --trials trials with the median pruner over a small real space, through `dialsum.tune.tune`:
rows generated against rows the same trials would have generated without pruning (and without the cache).
Run: `python benchmarks/tune.py [--n 48] [--repeats 3] [--trials 12] [--max-new-tokens 16]`.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import yaml

from common import ROOT, real_dev_or_sample
from dialsum.config import config_from_dict, load_config, save_config
from dialsum.data import load_dialogues
from dialsum.predict import Predictor, predict_split
from dialsum.schemes import score_dialogues
from dialsum.tiny import tiny_model_cached
from dialsum.tune import _Trials, split_rows
from dialsum.tune_report import pruning_savings
from dialsum.tune_space import load_space


def make_run(root: Path, max_new_tokens: int, batch: int) -> Path:
    run = root / "run"
    shutil.copytree(tiny_model_cached("llama"), run / "model")
    raw = load_config(ROOT / "configs" / "demo.yaml").to_dict()
    raw["model"]["name_or_path"] = str(run / "model")
    raw["generation"].update(max_new_tokens=max_new_tokens, batch_size=batch, no_repeat_ngram_size=3)
    raw["training"]["max_length"] = 512
    raw["prompt"]["topic"] = "always"
    save_config(config_from_dict(raw), run / "config.yaml")
    return run


def write_rows(path: Path, source: Path, n: int) -> Path:
    import csv

    with open(source, encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))[:n]
    with open(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=48, help="dev rows (half of them are tuned on)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--batch", type=int, default=4)
    args = parser.parse_args()

    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    root = Path(tempfile.mkdtemp(prefix="dialsum-tune-bench-"))
    run = make_run(root, args.max_new_tokens, args.batch)
    data = write_rows(root / "dev.csv", real_dev_or_sample("train.csv"), args.n)
    print(f"load average (2 cores shared?): {os.getloadavg()[0]:.1f}")
    print(f"data: {data} ({args.n} rows), tiny:llama, max_new_tokens {args.max_new_tokens}, batch {args.batch}")

    predictor = Predictor.from_path(run)
    config = predictor.config
    dialogues = load_dialogues(data)
    split = split_rows(dialogues, 0)
    by_id = {d.id: d for d in dialogues}
    tuning = [by_id[i] for i in split["tuning"]]
    space_file = root / "space.yaml"
    space_file.write_text(yaml.safe_dump({"generation.repetition_penalty": {"low": 1.0, "high": 1.3}}))
    space = load_space(space_file, config)
    work = _Trials(predictor, config, tuning, [], progress=False)
    score_dialogues(["워밍업"], tuning[:1], config.evaluation)  # Kiwi loads once, outside the timings
    study = optuna.create_study(
        storage=f"sqlite:///{root / 'overhead.db'}", direction="maximize", study_name="overhead",
        pruner=optuna.pruners.MedianPruner(n_startup_trials=10**6),  # measure whole trials
    )  # fmt: skip
    objective = work.objective(space, grid=False)
    plain, scored, trial = [], [], []
    for repeat in range(args.repeats):
        penalty = 1.0 + 0.01 * (repeat + 1)  # new settings each repeat: never a cache hit
        settings = config_from_dict({**config.to_dict(), "generation": {**config.to_dict()["generation"],
                                     "repetition_penalty": penalty}})  # fmt: skip
        start = time.perf_counter()
        prediction = predict_split(predictor, tuning, settings, progress=False)
        plain.append(time.perf_counter() - start)
        score_dialogues(prediction.summaries, tuning, settings.evaluation, settings.generation.forbidden_scripts)
        scored.append(time.perf_counter() - start)
        study.enqueue_trial({"generation.repetition_penalty": penalty})
        start = time.perf_counter()
        study.optimize(objective, n_trials=1)
        trial.append(time.perf_counter() - start)
    p, s, t = (statistics.median(x) for x in (plain, scored, trial))
    print(f"\n1. one trial vs a plain predict of the same {len(tuning)} tuning rows (median of {args.repeats})")
    print(f"   predict_split alone:              {p:7.2f} s")
    print(f"   predict + score:                  {s:7.2f} s")
    print(f"   one tune trial:                   {t:7.2f} s")
    print(f"   trial / (predict + score):        {t / s:7.3f}  (overhead {100 * (t / s - 1):+.1f} %, target <= +10 %)")
    print(f"   trial / predict alone:            {t / p:7.3f}  (scoring is part of any search)")

    space_file.write_text(yaml.safe_dump({
        "generation.repetition_penalty": {"low": 1.0, "high": 1.5},
        "generation.no_repeat_ngram_size": [0, 2, 3, 4],
        "generation.num_beams": [1, 2],
    }))  # fmt: skip
    from dialsum.tune import tune

    start = time.perf_counter()
    result = tune(run, data, space_path=space_file, trials=args.trials, output_dir=root / "study", progress=False)
    elapsed = time.perf_counter() - start
    savings = pruning_savings(result.trials, len(result.split["tuning"]))
    states = [x["state"] for x in result.trials]
    print(f"\n2. a TPE study of {args.trials} trials, median pruner after a slice: {elapsed:.1f} s in all")
    print(f"   {states.count('complete')} complete, {states.count('pruned')} pruned, "
          f"{sum(x['cached'] for x in result.trials)} answered by the settings cache")  # fmt: skip
    print(
        f"   rows generated: {savings['rows_generated']} of {savings['rows_without_pruning']} "
        f"(pruning saved {savings['saved_by_pruning']:.0%}; pruning and cache {savings['saved_total']:.0%})"
    )
    print(
        f"   best trial {result.best['number']}: tuning {result.best['tuning']:.4f}, held-out "
        f"{result.heldout['best']:.4f} (untuned {result.untuned['tuning']:.4f} / {result.untuned['heldout']:.4f})"
    )
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
