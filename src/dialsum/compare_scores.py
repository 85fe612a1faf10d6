"""The scoring rows of `dialsum compare`: each run's scheme and analyzer, its headline's interval, whether its
predictions are degenerate, and whether its difference from the first run is real.

The paired bootstrap (uncertainty.paired_bootstrap) resamples the dialogues once for both runs, from their
per-row headlines in dev_per_sample.csv. It is only meaningful for the same dev rows scored under the same scheme and
analyzer; any other run is refused in that row, with the reason.
"""

from __future__ import annotations

from typing import Any

from dialsum.rundir import DEV_PER_SAMPLE_FILE, RunData

__all__ = ["paired_against_first", "scoring_rows"]


def _scheme(run: RunData) -> str:
    return str(run.dev_scores.get("scheme") or run.config.get("evaluation.scheme") or "kiwi")


def _per_row(run: RunData, key: str) -> tuple[dict[str, float] | None, str | None]:
    """id -> the per-row value of `key` from dev_per_sample.csv, or (None, why not)."""
    from dialsum.report import _read_examples

    examples = _read_examples(run.path / DEV_PER_SAMPLE_FILE)
    if examples is None:
        return None, f"no {DEV_PER_SAMPLE_FILE}"
    values: dict[str, float] = {}
    for example in examples:
        value = example.get(key)
        if not isinstance(value, (int, float)):
            return None, f"{DEV_PER_SAMPLE_FILE} has no per-row {key}"
        values[str(example.get("id"))] = float(value)
    return values, None


def paired_against_first(runs: list[RunData]) -> dict[str, Any]:
    """{"baseline", "key", "runs": [per run: the paired bootstrap's dict, {"baseline": true}, or {"refused": why}]}."""
    from dialsum.schemes import get_scheme
    from dialsum.uncertainty import paired_bootstrap

    if not runs:
        return {}
    first = runs[0]
    result: dict[str, Any] = {"baseline": first.name, "key": None, "runs": []}
    if not first.dev_scores:
        result["runs"] = [{"refused": f"the first run ({first.name}) has no dev scores"} for _ in runs]
        return result
    scheme = get_scheme(_scheme(first))
    key = scheme.rank_key(first.dev_scores)
    result.update(key=key, scheme=scheme.name)
    base, why = _per_row(first, key)
    for index, run in enumerate(runs):
        if index == 0:
            result["runs"].append({"baseline": True} if base is not None else {"refused": why})
            continue
        if base is None:
            result["runs"].append({"refused": f"the first run ({first.name}): {why}"})
            continue
        if not run.dev_scores:
            result["runs"].append({"refused": "no dev scores"})
            continue
        if _scheme(run) != scheme.name:
            result["runs"].append({"refused": f"scored under {_scheme(run)}, the first run under {scheme.name}"})
            continue
        if run.dev_scores.get("analyzer") != first.dev_scores.get("analyzer"):
            result["runs"].append({"refused": "scored with another analyzer (version) than the first run"})
            continue
        values, why_not = _per_row(run, key)
        if values is None:
            result["runs"].append({"refused": why_not})
            continue
        if set(values) != set(base):
            shared = len(set(values) & set(base))
            result["runs"].append(
                {"refused": f"scored on other dev rows ({len(values)} vs {len(base)}, {shared} shared)"}
            )
            continue
        ids = list(base)
        result["runs"].append(paired_bootstrap([base[i] for i in ids], [values[i] for i in ids]))
    return result


def _paired_text(entry: dict[str, Any]) -> str:
    if entry.get("baseline"):
        return "baseline (first run)"
    if "refused" in entry:
        return f"refused: {entry['refused']}"
    return (
        f"{entry['difference']:+.2f} [{entry['low']:+.2f}, {entry['high']:+.2f}], better in "
        f"{entry['better']:.0%} of resamples"
    )


def scoring_rows(runs: list[RunData], notes: list[str]) -> tuple[dict[str, list[str]], dict[str, Any]]:
    """(row label -> one text per run, the paired result for compare.json). Adds a note where the runs' schemes
    differ or a run's predictions are degenerate."""
    from dialsum.degeneracy import SHARE_LIMIT
    from dialsum.schemes import LABELS

    def interval(run: RunData) -> str:
        i = run.dev_scores.get("interval")
        if not i or run.dev_scores.get(i["key"]) is None:
            return "—"
        return f"{run.dev_scores[i['key']]:.2f} [{i['low']:.2f}, {i['high']:.2f}]"

    def degenerate(run: RunData) -> str:
        d = run.dev_scores.get("degeneracy")
        if not isinstance(d, dict):
            return "—"
        if d.get("degenerate"):
            notes.append(
                f"{run.path}: the dev predictions are degenerate ({d['degenerate_rows']} rows of repetition / tag "
                f"spam, {SHARE_LIMIT:.0%} or more): its scores are not to be trusted"
            )
            return f"YES ({d['degenerate_rows']} rows): not to be trusted"
        return f"no ({d['degenerate_rows']} rows)"

    scored = [run for run in runs if run.dev_scores]
    rows: dict[str, list[str]] = {}
    if scored:
        rows["dev scheme"] = [_scheme(run) if run.dev_scores else "—" for run in runs]
        rows["dev analyzer"] = [str(run.dev_scores.get("analyzer", "—")) for run in runs]
        rows["dev 95 % interval of the headline"] = [interval(run) for run in runs]
        rows["dev degenerate"] = [degenerate(run) for run in runs]
    paired = paired_against_first(runs)
    if len(runs) > 1 and paired.get("key"):
        label = f"paired difference vs {runs[0].name} ({LABELS[paired['key']]}, 95 %)"
        rows[label] = [_paired_text(entry) for entry in paired["runs"]]
    return rows, paired
