"""`dialsum inspect`: see exactly what the model will be trained on before spending GPU hours."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.table import Table
from rich.text import Text

from dialsum.config import Config
from dialsum.data import load_dialogues
from dialsum.encode import IGNORE_INDEX, encode_dialogues, prepare_tokenizer
from dialsum.errors import ConfigError
from dialsum.prompt import resolve_topic_policy
from dialsum.stats import length_percentiles, pack_lengths, packed_waste, padded_waste


def render_example(tokenizer, example: dict) -> Text:
    """Masked (prompt) tokens dim, trained (summary) tokens bold green."""
    text = Text()
    if "labels" in example and len(example["labels"]) == len(example["input_ids"]):
        # decode runs of tokens, not single tokens: a byte-level token can hold half a Hangul syllable
        runs: list[tuple[bool, list[int]]] = []
        for token_id, label in zip(example["input_ids"], example["labels"]):
            trained = label != IGNORE_INDEX
            if runs and runs[-1][0] == trained:
                runs[-1][1].append(token_id)
            else:
                runs.append((trained, [token_id]))
        for trained, ids in runs:
            text.append(tokenizer.decode(ids), style="bold green" if trained else "dim")
    else:  # seq2seq: encoder input, then the decoder target
        text.append(tokenizer.decode(example["input_ids"]), style="dim")
        text.append("\n→ ")
        text.append(tokenizer.decode([t for t in example["labels"] if t != IGNORE_INDEX]), style="bold green")
    return text


def inspect_data(
    config: Config, data_path: str | None = None, n: int = 3, console: Console | None = None, model: str | None = None
) -> dict:
    """Render the first `n` training examples and the dataset's token statistics.

    `model` (a model or tokenizer folder, e.g. ../shared/models/llama-3.2-korean-bllossom-3b) replaces
    model.name_or_path, its kind read from its config.json, so the real prompt shows before any training."""
    console = console or Console()
    if model is not None:
        from dialsum.config import config_from_dict
        from dialsum.models import checkpoint_kind, resolve_model_path

        model = resolve_model_path(model, "--model")
        raw = config.to_dict()
        raw["model"] = {**raw["model"], "name_or_path": model, "kind": checkpoint_kind(model, config)}
        config = config_from_dict(raw, source=f"--model {model}")
    path = data_path or config.data.train
    if path is None:
        raise ConfigError("nothing to inspect: set data.train or pass --data")
    dialogues = load_dialogues(path, strip_whitespace=config.data.strip_whitespace)
    if config.data.test and config.prompt.topic == "auto" and not Path(config.data.test).is_file():
        # inspect reads the training file only; data.test would merely inform prompt.topic=auto (train reads it)
        console.print(
            f"[yellow]prompt:[/] data.test {config.data.test} not found: prompt.topic=auto is decided from "
            f"{path} alone here (training reads data.test too)"
        )
        config = config.model_copy(deep=True)
        config.data.test = None
    config, topic_note = resolve_topic_policy(config, dialogues)
    if topic_note:
        console.print(f"[yellow]prompt:[/] {topic_note}")
    tokenizer, added, notes = prepare_tokenizer(config, dialogues)
    if added:
        console.print(f"added {len(added)} speaker/mask tokens to the vocabulary: {', '.join(added[:8])}")
    for line in notes:
        console.print(f"[yellow]chat template:[/] {line}")
    labeled = [d for d in dialogues if d.references]
    examples, stats = encode_dialogues(tokenizer, labeled, config)
    skipped = set(stats.skipped_ids)
    example_ids = [d.id for d in labeled if d.id not in skipped]  # the id of each encoded example, in order
    unlabeled = len(dialogues) - len(labeled)
    for index, example in enumerate(examples[:n]):
        trained = sum(1 for label in example["labels"] if label != IGNORE_INDEX)
        console.rule(f"example {index} — {example_ids[index]}: {len(example['input_ids'])} tokens, {trained} trained")
        console.print(render_example(tokenizer, example))

    def total_length(e: dict) -> int:
        return len(e["input_ids"]) + (len(e["labels"]) if config.model.kind == "seq2seq" else 0)

    lengths = [total_length(e) for e in examples]
    # before trimming: the same examples with a budget nothing exceeds
    untrimmed_config = config.model_copy(deep=True)
    untrimmed_config.training.max_length = 10**9
    untrimmed_config.training.max_target_length = 10**9
    untrimmed_config.training.skip_too_long = True
    untrimmed, _ = encode_dialogues(tokenizer, labeled, untrimmed_config)
    raw_lengths = [total_length(e) for e in untrimmed]
    batch = config.training.per_device_train_batch_size
    rows = [sum(row) for row in pack_lengths(lengths, config.training.max_length)] if lengths else []
    result = {
        "file": str(path),
        "records": len(dialogues),
        "unlabeled": unlabeled,
        "encoded": stats.encoded,
        "example_ids": example_ids[:n],
        "trimmed": stats.trimmed,
        "skipped": len(stats.skipped_ids),
        "lengths_before_trimming": length_percentiles(raw_lengths) if raw_lengths else {},
        "lengths": length_percentiles(lengths) if lengths else {},
        "padding_waste_padded": padded_waste(lengths, batch) if lengths else 0.0,
        "padding_waste_packed": padded_waste(rows, batch) if rows else 0.0,
        "pack_fill_fixed_rows": 1 - packed_waste(lengths, config.training.max_length, padding_free=False)
        if lengths
        else 0.0,
    }
    table = Table(title=f"dataset: {path}", show_header=False)
    table.add_row("records", f"{len(dialogues)} ({unlabeled} without summary, not encoded)")
    table.add_row(
        "encoded",
        f"{stats.encoded}; trimmed to fit max_length={config.training.max_length}: {stats.trimmed}; "
        f"skipped: {len(stats.skipped_ids)}",
    )
    if lengths:
        table.add_row(
            "tokens before trimming p50/p90/p95/p99/max",
            " / ".join(f"{v:.0f}" for v in result["lengths_before_trimming"].values()),
        )
        table.add_row("tokens p50/p90/p95/p99/max", " / ".join(f"{v:.0f}" for v in result["lengths"].values()))
        table.add_row(f"padding waste, padded batches of {batch}", f"{result['padding_waste_padded']:.1%}")
        table.add_row(
            f"padding waste, packed rows ({len(rows)}) padded per batch of {batch}",
            f"{result['padding_waste_packed']:.1%} (0 with padding-free packing)",
        )
        table.add_row(f"pack fill, fixed rows of {config.training.max_length}", f"{result['pack_fill_fixed_rows']:.1%}")
    console.print(table)
    return result
