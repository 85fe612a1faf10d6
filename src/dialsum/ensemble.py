"""`dialsum ensemble`: choose, per dialogue, the candidate summary the other candidates agree with most.

Minimum-Bayes-risk (MBR) selection: every candidate is scored by its summed utility against the other
candidates of the same dialogue (each one standing in for the unknown reference), and the best one is
kept. The utility is a weighted sum of ROUGE-1/2/L F1 on the morphemes of the scoring scheme (schemes.py: Kiwi
forms for kiwi, Mecab morphemes for dialogsum and dcs), so the consensus is measured the way the competition
scores. Candidates come from several prediction files (independently trained models, K-fold runs) or from one
file holding several sampled or beam candidates per dialogue (`dialsum predict --num-candidates N`).

Speed: every text is tokenized once (one batched Kiwi call); each candidate's unigram and bigram counts
and its LCS bit masks are computed once, so a pair costs two small dict intersections and a bit-parallel
LCS (a few big-integer operations per token) instead of a fresh rouge-score call.
"""

from __future__ import annotations

import math
import os
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dialsum.errors import DataError, DialsumError
from dialsum.writer import write_csv, write_json

__all__ = [
    "EnsembleResult",
    "Sources",
    "Utility",
    "ensemble_files",
    "load_sources",
    "mbr_select",
    "pair_utility",
    "parse_utility",
]

TIE_TOLERANCE = 1e-9  # expected utilities closer than this are a tie; the earlier candidate wins


# --------------------------------------------------------------------------------------------------
# Utility
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Utility:
    """Weights of ROUGE-1, ROUGE-2 and ROUGE-L F1 (each in [0, 1]) in the pair utility."""

    rouge1: float = 1.0
    rouge2: float = 1.0
    rougeL: float = 1.0

    def describe(self) -> str:
        return f"{self.rouge2:g}*R2 + {self.rougeL:g}*RL + {self.rouge1:g}*R1"


_NAMED = {"rouge1": Utility(1, 0, 0), "rouge2": Utility(0, 1, 0), "rougel": Utility(0, 0, 1), "sum": Utility()}


def parse_utility(text: str) -> Utility:
    """`rouge1`, `rouge2`, `rougeL`, `sum` (the competition score), or three weights `R2,RL,R1` such as `2,1,1`."""
    spec = text.strip()
    if spec.lower() in _NAMED:
        return _NAMED[spec.lower()]
    parts = [p.strip() for p in spec.split(",")]
    try:
        weights = [float(p) for p in parts]
    except ValueError:
        weights = []
    if len(weights) != 3 or not all(math.isfinite(w) and w >= 0 for w in weights) or not any(weights):
        raise DialsumError(
            f"--utility {text!r}: expected rouge1, rouge2, rougeL, sum, or three non-negative weights "
            "for R2,RL,R1 such as 2,1,1"
        )
    r2, rl, r1 = weights
    return Utility(rouge1=r1, rouge2=r2, rougeL=rl)


# --------------------------------------------------------------------------------------------------
# Pair utilities from cached features
# --------------------------------------------------------------------------------------------------


@dataclass
class _Features:
    """What a pair needs from one text: lengths, n-gram counts, and the LCS match masks."""

    length: int
    unigrams: Counter
    bigrams: Counter
    masks: dict[int, int]  # token id -> bit mask of its positions (bit i set: token i is that id)


def _features(ids: Sequence[int]) -> _Features:
    masks: dict[int, int] = {}
    for position, token in enumerate(ids):
        masks[token] = masks.get(token, 0) | (1 << position)
    return _Features(
        length=len(ids),
        unigrams=Counter(ids),
        bigrams=Counter(zip(ids, ids[1:])),
        masks=masks,
    )


def _overlap(a: Counter, b: Counter) -> int:
    if len(a) > len(b):
        a, b = b, a
    return sum(min(count, b[key]) for key, count in a.items() if key in b)


def _lcs_length(pattern: _Features, text_ids: Sequence[int]) -> int:
    """Length of the longest common subsequence, bit-parallel (Hyyro 2004): one pass over `text_ids`,
    the DP column held in the bits of one integer."""
    full = (1 << pattern.length) - 1
    v = full
    masks = pattern.masks
    for token in text_ids:
        u = v & masks.get(token, 0)
        v = ((v + u) | (v - u)) & full
    return pattern.length - v.bit_count()


def _f1(overlap: int, a: int, b: int) -> float:
    # rouge-score's F1 2PR/(P+R) with P = overlap/a, R = overlap/b is 2*overlap/(a+b); symmetric in a, b.
    return 2.0 * overlap / (a + b) if overlap else 0.0


def _pair(fa: _Features, fb: _Features, ids_b: Sequence[int]) -> tuple[float, float, float]:
    """(ROUGE-1, ROUGE-2, ROUGE-L) F1 in [0, 1] between two tokenized texts."""
    if not fa.length or not fb.length:
        return 0.0, 0.0, 0.0
    r1 = _f1(_overlap(fa.unigrams, fb.unigrams), fa.length, fb.length)
    r2 = _f1(_overlap(fa.bigrams, fb.bigrams), fa.length - 1, fb.length - 1) if fa.length > 1 and fb.length > 1 else 0.0
    rl = _f1(_lcs_length(fa, ids_b), fa.length, fb.length)
    return r1, r2, rl


def pair_utility(a: Sequence[str], b: Sequence[str], utility: Utility = Utility()) -> float:
    """The utility between two token sequences (for tests and one-off use; `mbr_select` caches features)."""
    vocab: dict[str, int] = {}
    ids_a = [vocab.setdefault(t, len(vocab)) for t in a]
    ids_b = [vocab.setdefault(t, len(vocab)) for t in b]
    r1, r2, rl = _pair(_features(ids_a), _features(ids_b), ids_b)
    return utility.rouge1 * r1 + utility.rouge2 * r2 + utility.rougeL * rl


# --------------------------------------------------------------------------------------------------
# MBR selection
# --------------------------------------------------------------------------------------------------


Tokenize = Callable[[Sequence[str]], list[tuple[str, ...]]]


def tokenizer_for(scheme: str = "kiwi", tokenizer: str = "kiwi") -> Tokenize:
    """The tokens the scoring scheme's ROUGE counts (schemes.scheme_tokens): Kiwi forms or `tokenizer` (kiwi),
    Mecab morphemes (dialogsum), cleaned Mecab morphemes (dcs). The MBR utility compares these."""
    from dialsum.metrics import TOKENIZERS
    from dialsum.schemes import SCHEMES, get_scheme, scheme_tokens

    if scheme not in SCHEMES and scheme in TOKENIZERS:
        raise DialsumError(
            f"--scheme {scheme}: --scheme is the scoring recipe ({', '.join(SCHEMES)}); the analyzer is "
            f"--tokenizer {scheme}"
        )
    get_scheme(scheme)
    if tokenizer not in TOKENIZERS:
        raise DialsumError(f"--tokenizer {tokenizer!r}: expected one of {', '.join(TOKENIZERS)}")
    if scheme != "kiwi" and tokenizer != "kiwi":
        raise DialsumError(f"--tokenizer applies to --scheme kiwi only; --scheme {scheme} fixes its analyzer (Mecab)")
    return lambda texts: scheme_tokens(texts, scheme, tokenizer)


@dataclass
class EnsembleResult:
    summaries: list[str]  # the chosen candidate per dialogue ("" when every candidate was empty)
    winners: list[int]  # the source index of the chosen candidate (-1: none, every candidate empty)
    expected_utility: list[float]  # mean utility of the winner against the other candidates kept
    counts: dict[str, int] = field(default_factory=dict)  # empty / excluded_by_length / single_candidate / all_empty


def mbr_select(
    candidates: Sequence[Sequence[str]],
    tokenize: Tokenize | str = "kiwi",
    utility: Utility = Utility(),
    length_percentile: float | None = None,
) -> EnsembleResult:
    """MBR choice per row: `candidates[row][k]` is candidate k of dialogue `row` (k = source index).

    Empty candidates are never chosen and are no evidence. With `length_percentile` p, a candidate with
    more morphemes than the p-th percentile of its dialogue's non-empty candidates is left out (chosen
    never, evidence never). Among equal expected utilities the candidate with the lowest index wins.
    """
    if length_percentile is not None and not 0 < length_percentile <= 100:
        raise DialsumError(f"--length-percentile {length_percentile}: expected a number in (0, 100]")
    if isinstance(tokenize, str):  # a scheme name (kiwi, dialogsum, dcs) or a kiwi-scheme analyzer (mecab, whitespace)
        from dialsum.schemes import SCHEMES

        tokenize = tokenizer_for(tokenize) if tokenize in SCHEMES else tokenizer_for(tokenizer=tokenize)
    texts = list(dict.fromkeys(t for row in candidates for t in row if t.strip()))
    vocab: dict[str, int] = {}
    tokens = tokenize(texts)  # every text once, one batched call
    token_ids = {text: [vocab.setdefault(t, len(vocab)) for t in ts] for text, ts in zip(texts, tokens, strict=True)}
    features = {text: _features(ids) for text, ids in token_ids.items()}
    weights = (utility.rouge1, utility.rouge2, utility.rougeL)

    counts = {"candidates": 0, "empty": 0, "excluded_by_length": 0, "single_candidate": 0, "all_empty": 0}
    summaries: list[str] = []
    winners: list[int] = []
    expected: list[float] = []
    for row in candidates:
        counts["candidates"] += len(row)
        kept = [k for k, text in enumerate(row) if text.strip() and features[text].length]
        counts["empty"] += len(row) - len(kept)
        if length_percentile is not None and len(kept) > 1:
            lengths = np.array([features[row[k]].length for k in kept], dtype=float)
            limit = float(np.percentile(lengths, length_percentile))
            short = [k for k, n in zip(kept, lengths) if n <= limit]
            counts["excluded_by_length"] += len(kept) - len(short)
            kept = short
        if not kept:
            counts["all_empty"] += 1
            summaries.append("")
            winners.append(-1)
            expected.append(0.0)
            continue
        if len(kept) == 1:
            counts["single_candidate"] += 1
            summaries.append(row[kept[0]])
            winners.append(kept[0])
            expected.append(0.0)
            continue
        totals = [0.0] * len(kept)
        pair_cache: dict[tuple[str, str], float] = {}
        for i in range(len(kept)):
            a = row[kept[i]]
            for j in range(i + 1, len(kept)):
                b = row[kept[j]]
                key = (a, b) if a <= b else (b, a)
                value = pair_cache.get(key)
                if value is None:
                    if a == b:
                        value = sum(weights)
                    else:
                        parts = _pair(features[a], features[b], token_ids[b])
                        value = sum(w * p for w, p in zip(weights, parts))
                    pair_cache[key] = value
                totals[i] += value
                totals[j] += value
        best = max(totals)
        choice = next(i for i, total in enumerate(totals) if total >= best - TIE_TOLERANCE)
        summaries.append(row[kept[choice]])
        winners.append(kept[choice])
        expected.append(totals[choice] / (len(kept) - 1))
    return EnsembleResult(summaries=summaries, winners=winners, expected_utility=expected, counts=counts)


# --------------------------------------------------------------------------------------------------
# Reading candidates
# --------------------------------------------------------------------------------------------------


@dataclass
class Sources:
    """Candidates aligned by dialogue: `texts[k][row]` is source k's summary of dialogue `ids[row]`."""

    names: list[str]
    ids: list[str]
    texts: list[list[str]]

    def by_row(self) -> list[list[str]]:
        return [[source[row] for source in self.texts] for row in range(len(self.ids))]


def _read_candidate_file(path: Path) -> list[tuple[str, dict[str, str]]]:
    """(name, fname -> summary) per source in one CSV: one source for `fname,summary`; one per candidate
    index for a multi-candidate file (`fname,candidate,summary`, as `predict --num-candidates` writes)."""
    from dialsum.data import read_table

    rows = read_table(path, required=["fname", "summary"])
    multi = "candidate" in rows[0]
    per_source: dict[str, dict[str, str]] = {}
    for number, row in enumerate(rows, start=1):
        fname = row["fname"].strip()
        if not fname:
            raise DataError(f"{path} row {number}: field 'fname' is empty")
        name = str(path)
        if multi:
            index = row["candidate"].strip()
            if not index.isdigit():
                raise DataError(
                    f"{path} row {number} (fname={fname}): field 'candidate' must be a number, got {index!r}"
                )
            name = f"{path}#{int(index)}"
        source = per_source.setdefault(name, {})
        if fname in source:
            what = f"candidate {int(row['candidate'])} of " if multi else ""
            raise DataError(f"{path} row {number}: duplicate {what}fname {fname!r}")
        source[fname] = row["summary"].strip()
    if multi:  # candidate 0, 1, ... in numeric order
        per_source = dict(sorted(per_source.items(), key=lambda item: int(item[0].rsplit("#", 1)[1])))
    return list(per_source.items())


def _few(ids: list[str]) -> str:
    return ", ".join(ids[:3]) + (", ..." if len(ids) > 3 else "")


def load_sources(paths: Sequence[str | Path], split: str = "dev") -> Sources:
    """Read every candidate source; each must cover exactly the dialogues of the first (order: the first's)."""
    from dialsum.rundir import prediction_files

    files = [f for p in paths for f in prediction_files(p, split)]
    sources: list[tuple[str, dict[str, str]]] = [s for f in files for s in _read_candidate_file(f)]
    if not sources:
        raise DialsumError("no candidate sources given")
    names = [name for name, _ in sources]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise DialsumError(f"source given twice: {', '.join(duplicates)}")
    first_name, first = sources[0]
    ids = list(first)
    for name, source in sources[1:]:
        missing = [i for i in ids if i not in source]
        extra = [i for i in source if i not in first]
        if missing or extra:
            parts = []
            if missing:
                parts.append(f"missing {len(missing)} ids ({_few(missing)})")
            if extra:
                parts.append(f"{len(extra)} ids not in {first_name} ({_few(extra)})")
            detail = "; ".join(parts)
            raise DataError(f"{name}: does not cover the same dialogues as {first_name}: {detail}")
    return Sources(names=names, ids=ids, texts=[[source[i] for i in ids] for _, source in sources])


# --------------------------------------------------------------------------------------------------
# The command
# --------------------------------------------------------------------------------------------------


def _short_names(names: list[str]) -> list[str]:
    """Display names: each path relative to the sources' common directory (a lone source keeps its file name)."""
    paths = [Path(n.split("#")[0]) for n in names]
    common = Path(os.path.commonpath([str(p.parent.resolve()) for p in paths]))
    shown = []
    for name, path in zip(names, paths):
        suffix = name[len(str(path)) :]
        try:
            shown.append(str(path.resolve().relative_to(common)) + suffix)
        except ValueError:
            shown.append(name)
    return shown


def ensemble_files(
    paths: Sequence[str | Path],
    output: str | Path,
    references: str | Path | None = None,
    utility: Utility | str = "sum",
    length_percentile: float | None = None,
    scheme: str = "kiwi",
    split: str = "dev",
    json_out: str | Path | None = None,
    choices_out: str | Path | None = None,
    submission: str | Path | None = None,
    console=None,
    overwrite: bool = False,
    tokenizer: str = "kiwi",
) -> dict[str, Any]:
    """Read the sources, MBR-select, write `fname,summary` to `output`; return (and print) the report.

    `scheme` is the scoring recipe (schemes.py): its morphemes are what the utility compares, and with
    `references` each source, their mean, the ensemble and the oracle (the best candidate per dialogue) are scored
    under it. `tokenizer` picks the analyzer of the kiwi scheme. Every output is checked before anything is read or
    scored: none may be a source or the references, none may exist already unless `overwrite`.
    """
    from rich.console import Console
    from rich.table import Table

    from dialsum.data import load_references, load_topics, write_predictions
    from dialsum.rundir import prediction_files
    from dialsum.schemes import SHORT_LABELS, analyzer_name, get_scheme, score_scheme
    from dialsum.writer import OutputPlan

    console = console or Console()
    utility = parse_utility(utility) if isinstance(utility, str) else utility
    tokenize = tokenizer_for(scheme, tokenizer)
    definition = get_scheme(scheme)
    source_files = [f for p in paths for f in prediction_files(p, split)]
    outputs = OutputPlan([*paths, *source_files, references], overwrite)
    outputs.file(output, "--output")
    for path, flag in ((json_out, "--json"), (choices_out, "--choices"), (submission, "--submission")):
        outputs.file(path, flag)
    sources = load_sources(paths, split=split)
    if len(sources.names) == 1:
        console.print(
            f"[yellow]one source ({sources.names[0]}): there is nothing to choose between, so the ensemble is that "
            "source unchanged; give three or more[/]"
        )
    if len(sources.names) == 2:
        console.print(
            "[yellow]two sources: their utilities against each other are equal, so MBR cannot choose and "
            "the first source wins every tie; give three or more[/]"
        )
    refs = topics = None
    if references is not None:  # fail on a bad reference file before the slow part
        by_id = load_references(references)
        missing = [i for i in sources.ids if i not in by_id]
        extra = [i for i in by_id if i not in set(sources.ids)]
        if missing or extra:
            raise DataError(
                f"{references}: the references and the candidates cover different dialogues "
                f"({len(missing)} candidate ids without a reference, {len(extra)} reference ids without candidates)"
            )
        refs = [by_id[i] for i in sources.ids]
        topic_of = load_topics(references)
        topics = [topic_of.get(i) for i in sources.ids]

    result = mbr_select(sources.by_row(), tokenize, utility, length_percentile)
    write_predictions(output, sources.ids, result.summaries)
    if submission is not None:
        from dialsum.submission import write_submission

        write_submission(Path(submission), sources.ids, result.summaries)

    names = _short_names(sources.names)
    wins = [sum(1 for w in result.winners if w == k) for k in range(len(names))]
    analyzer = analyzer_name(scheme, tokenizer)
    report: dict[str, Any] = {
        "utility": utility.describe(),
        "length_percentile": length_percentile,
        "scheme": scheme,
        "tokenizer": tokenizer,
        "analyzer": analyzer,
        "dialogues": len(sources.ids),
        "sources": [{"name": n, "path": p, "wins": w} for n, p, w in zip(names, sources.names, wins)],
        "counts": result.counts,
        # how much the winners agree with the other candidates (utility per pair, 0 to the weights' sum): near the
        # maximum means near-identical candidates, where MBR has little to choose from
        "mean_expected_utility": float(np.mean(result.expected_utility)) if result.expected_utility else 0.0,
        "output": str(output),
    }
    title = f"MBR ensemble of {len(names)} sources over {len(sources.ids)} dialogues ({utility.describe()})"
    caption = (
        f"scheme {scheme} ({definition.competition}); analyzer: {analyzer}; "
        f"{SHORT_LABELS[definition.headline]}: the {definition.headline_label}"
    )
    table = Table(title=title, caption=caption)
    columns = definition.columns()
    table.add_column("source", overflow="fold")
    table.add_column("wins", justify="right")
    for key, _ in columns:
        table.add_column(SHORT_LABELS[key], justify="right")

    def row(label: str, wins_text: str, s: dict | None, style: str | None = None) -> None:
        numbers = ["not computed" if s.get(k) is None else f"{s[k]:.2f}" for k, _ in columns] if s else []
        table.add_row(label, wins_text, *(numbers or [""] * len(columns)), style=style)

    if refs is None:
        for name, w in zip(names, wins):
            row(name, str(w), None)
    else:
        per_row_ranked = []
        notes: list[str] = []
        for entry, texts in zip(report["sources"], sources.texts):
            scores, rows = score_scheme(texts, refs, scheme, tokenizer, topics=topics)
            entry["scores"] = _plain(scores)
            key = definition.rank_key(scores)
            per_row_ranked.append([r[key] for r in rows])
            notes = scores.get("notes", notes)
            row(entry["name"], str(entry["wins"]), scores)
        mean = {
            k: None
            if any(e["scores"].get(k) is None for e in report["sources"])
            else float(np.mean([e["scores"][k] for e in report["sources"]]))
            for k, _ in columns
        }
        best = max(report["sources"], key=lambda e: definition.rank_value(e["scores"]) or 0.0)
        ensemble_scores, _ = score_scheme(result.summaries, refs, scheme, tokenizer, topics=topics)
        rank_key = definition.rank_key(ensemble_scores)
        oracle = float(np.mean(np.max(np.array(per_row_ranked, dtype=float), axis=0)))
        report["mean_of_sources"] = mean
        report["best_source"] = best["name"]
        report["ensemble"] = _plain(ensemble_scores)
        report["ensemble_interval"] = ensemble_scores.get("interval")
        report["ensemble_degeneracy"] = ensemble_scores.get("degeneracy")
        report["oracle"] = {"key": rank_key, "value": oracle}
        report["notes"] = notes
        table.add_section()
        row("mean of sources", "", mean)
        row(f"best source ({best['name']})", "", best["scores"])
        row("[bold]ensemble (MBR)[/bold]", "", ensemble_scores, "bold")
        oracle_cells = [f"{oracle:.2f}" if k == rank_key else "" for k, _ in columns]
        table.add_row(f"oracle (best candidate per dialogue, by {rank_key})", "", *oracle_cells)
    console.print(table)
    for note in report.get("notes", []):
        console.print(f"note: {note}", soft_wrap=True, markup=False, highlight=False)
    if (report.get("ensemble_degeneracy") or {}).get("degenerate"):
        console.print("[bold red]warning: the ensemble's predictions are DEGENERATE (repetition / tag spam)[/]")
    counts = result.counts
    console.print(
        f"{counts['candidates']} candidates: {counts['empty']} empty, "
        f"{counts['excluded_by_length']} excluded above the length percentile, "
        f"{counts['single_candidate']} dialogues with one candidate left, "
        f"{counts['all_empty']} with none (empty summary written); winners' mean utility against the others "
        f"{report['mean_expected_utility']:.3f} of {sum((utility.rouge1, utility.rouge2, utility.rougeL)):g}; "
        f"wrote {output}"
    )
    if json_out is not None:
        write_json(json_out, report)
    if choices_out is not None:
        rows = [
            [i, names[winner] if winner >= 0 else "", f"{value:.4f}", text]
            for i, winner, value, text in zip(sources.ids, result.winners, result.expected_utility, result.summaries)
        ]
        write_csv(choices_out, ["fname", "source", "expected_utility", "summary"], rows)
    return report


def _plain(scores: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in scores.items() if v is None or isinstance(v, (int, float, str))}
