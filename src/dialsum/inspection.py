"""`dialsum inspect`: see exactly what the model will be trained on before spending GPU hours."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table
from rich.text import Text

from dialsum.config import Config
from dialsum.data import load_dialogues
from dialsum.encode import IGNORE_INDEX, add_seq2seq_special_tokens, check_chat_template, encode_dialogues, ensure_pad_token
from dialsum.errors import ConfigError
from dialsum.models import load_tokenizer
from dialsum.stats import length_percentiles, packed_waste, padded_waste


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


def inspect_data(config: Config, data_path: str | None = None, n: int = 3, console: Console | None = None) -> dict:
    console = console or Console()
    path = data_path or config.data.train
    if path is None:
        raise ConfigError("nothing to inspect: set data.train or pass --data")
    dialogues = load_dialogues(path)
    tokenizer = load_tokenizer(config.model.name_or_path, config)
    ensure_pad_token(tokenizer)
    if config.model.kind == "seq2seq":
        added = add_seq2seq_special_tokens(tokenizer, dialogues)
        if added:
            console.print(f"added {len(added)} special tokens: {', '.join(added[:10])}")
    else:
        check = check_chat_template(tokenizer, config.prompt)
        for line in check.notes + check.problems:
            console.print(f"[yellow]chat template:[/] {line}")
    examples, stats = encode_dialogues(tokenizer, [d for d in dialogues if d.references], config)
    unlabeled = sum(1 for d in dialogues if not d.references)
    for index, example in enumerate(examples[:n]):
        trained = sum(1 for label in example["labels"] if label != IGNORE_INDEX)
        console.rule(f"example {index} — {dialogues[index].id}: {len(example['input_ids'])} tokens, {trained} trained")
        console.print(render_example(tokenizer, example))
    lengths = [len(e["input_ids"]) + (len(e["labels"]) if config.model.kind == "seq2seq" else 0) for e in examples]
    result = {
        "file": str(path),
        "records": len(dialogues),
        "unlabeled": unlabeled,
        "encoded": stats.encoded,
        "trimmed": stats.trimmed,
        "skipped": len(stats.skipped_ids),
        "lengths": length_percentiles(lengths) if lengths else {},
        "padding_waste_padded": padded_waste(lengths, config.training.per_device_train_batch_size) if lengths else 0.0,
        "padding_waste_packed": packed_waste(lengths, config.training.max_length, padding_free=True),
        "pack_fill_fixed_rows": 1 - packed_waste(lengths, config.training.max_length, padding_free=False) if lengths else 0.0,
    }
    table = Table(title=f"dataset: {path}", show_header=False)
    table.add_row("records", f"{len(dialogues)} ({unlabeled} without summary, not encoded)")
    table.add_row("encoded", f"{stats.encoded}; trimmed to fit max_length={config.training.max_length}: {stats.trimmed}; skipped: {len(stats.skipped_ids)}")
    if lengths:
        table.add_row("tokens p50/p90/p95/p99/max", " / ".join(f"{v:.0f}" for v in result["lengths"].values()))
        table.add_row(f"padding waste, padded batches of {config.training.per_device_train_batch_size}", f"{result['padding_waste_padded']:.1%}")
        table.add_row("padding waste, packed (padding-free)", f"{result['padding_waste_packed']:.1%}")
        table.add_row(f"pack fill, fixed rows of {config.training.max_length}", f"{result['pack_fill_fixed_rows']:.1%}")
    console.print(table)
    return result
