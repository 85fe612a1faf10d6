"""`dialsum plan CONFIG`: what a run will cost, before anyone rents a GPU.

Needs only the model's `config.json` and tokenizer (no weights, no GPU): the real token lengths of the
training file give examples, tokens, steps and padding waste; the architecture gives memory per GPU
(weights, gradients, optimizer state, activations) for full fine-tuning, LoRA and QLoRA, and FLOPs per
epoch, turned into hours at a stated MFU.

The arithmetic, per token of a decoder layer (hidden d, KV width k = kv_heads · head_dim, MLP width I):
- weights and optimizer: full fine-tuning keeps fp32 master weights, gradients and AdamW's two moments (4 + 4 + 8
  bytes per parameter; the precision policy: bf16 weights would lose AdamW's small updates, so only the compute
  runs in bf16); LoRA keeps the base frozen in bf16 (2 bytes) and trains fp32
  adapters (4 + 4 + 8 bytes per adapter parameter, PEFT's default upcast); QLoRA stores the block linears
  in NF4 with double quantisation (0.5 + 1/64 bytes per parameter; embeddings and norms stay bf16) and
  trains bf16 adapters (TRL casts them: 2 + 2 + 4 bytes);
- activations saved for the backward pass, bf16: 2 · (6d + 2k + 4I) bytes per token per layer (the two
  norm inputs and outputs, q/k/v, the attention output, and gate, up, silu(gate), their product); eager
  attention adds the probabilities, 2 · heads · L bytes per token; LoRA dropout adds the dropped input of
  each adapted linear and its mask (3 bytes per input feature). Gradient checkpointing keeps only each
  layer's input (2d bytes per token per layer) plus one layer's activations while it recomputes. TRL's
  fused LM head never builds the logits.
- FLOPs (forward): 2 · (block matmul parameters) per computed position, 2 · d · V per trained (labelled)
  position (TRL's fused LM head projects only those), and 4 · heads · head_dim per query-key pair the
  attention kernel computes (`packing.plan_epoch`). Training: × 3 (full), × 2 (LoRA/QLoRA: no weight
  gradients for the frozen base). Recomputation under gradient checkpointing is not model FLOPs: MFU
  absorbs it.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path

from dialsum.config import Config
from dialsum.errors import ConfigError
from dialsum.packing import EpochPlan, packing_layout, plan_epoch

GB = 1e9
PEAK_BF16_FLOPS = {"A100": 312e12, "H100": 989e12}  # dense bf16 tensor-core peak, SXM parts
DEFAULT_MFU = 0.4
NF4_BYTES = 0.5 + 1 / 64  # 4-bit weights + one fp8 absmax per block of 64 (double quantisation)


@dataclass
class Architecture:
    """The numbers of a Llama/Qwen-style decoder that cost memory and FLOPs, read from `config.json`."""

    model_type: str
    vocab: int
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    tied: bool

    @classmethod
    def from_config(cls, config: dict) -> Architecture:
        needed = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")
        missing = [k for k in needed if k not in config]
        if missing:
            raise ConfigError(f"config.json: not a Llama/Qwen-style decoder (no {', '.join(missing)})")
        heads = config["num_attention_heads"]
        return cls(
            model_type=config.get("model_type", "?"),
            vocab=config["vocab_size"],
            hidden=config["hidden_size"],
            layers=config["num_hidden_layers"],
            heads=heads,
            kv_heads=config.get("num_key_value_heads") or heads,
            head_dim=config.get("head_dim") or config["hidden_size"] // heads,
            intermediate=config["intermediate_size"],
            tied=bool(config.get("tie_word_embeddings", False)),
        )

    def linear_shapes(self) -> dict[str, tuple[int, int]]:
        """(in, out) of each linear layer of one decoder layer."""
        d, q, kv, i = self.hidden, self.heads * self.head_dim, self.kv_heads * self.head_dim, self.intermediate
        return {
            "q_proj": (d, q),
            "k_proj": (d, kv),
            "v_proj": (d, kv),
            "o_proj": (q, d),
            "gate_proj": (d, i),
            "up_proj": (d, i),
            "down_proj": (i, d),
        }

    @property
    def layer_matmul_params(self) -> int:
        return sum(a * b for a, b in self.linear_shapes().values())

    @property
    def embedding_params(self) -> int:
        return self.vocab * self.hidden

    @property
    def params(self) -> int:
        """Every parameter: embeddings (+ an untied LM head), linears and RMSNorm weights (biases ignored)."""
        norms = self.layers * 2 * self.hidden + self.hidden
        head = 0 if self.tied else self.embedding_params
        return self.embedding_params + head + self.layers * self.layer_matmul_params + norms

    def lora_params(self, r: int, targets: list[str] | str) -> int:
        """Adapter parameters r · (in + out) of every targeted linear; 'all-linear' leaves the LM head out (PEFT)."""
        shapes = self.linear_shapes()
        names = list(shapes) if targets == "all-linear" else [t for t in targets if t in shapes]
        return self.layers * sum(r * (shapes[n][0] + shapes[n][1]) for n in names)


def _bytes_per_weight(config: Config, method: str) -> int:
    """Bytes per weight under dialsum's precision policy (`models.training_weight_dtype`) on a bf16 GPU: full
    fine-tuning keeps fp32 master weights (AdamW's small updates round away in bf16); a frozen LoRA base loads in
    bf16. An explicit model.dtype wins."""
    if config.model.dtype != "auto":
        return 4 if config.model.dtype == "float32" else 2
    return 4 if method == "full" else 2


def memory_estimate(arch: Architecture, config: Config, method: str, tokens: int, row_length: int) -> dict[str, float]:
    """Bytes per GPU for `method` ('full', 'lora', 'qlora') with `tokens` positions in the largest micro-batch,
    in rows of at most `row_length` (for eager attention's probabilities)."""
    weight_bytes = _bytes_per_weight(config, method)
    lora = config.lora
    adapters = arch.lora_params(lora.r, lora.target_modules)
    if method == "full":
        weights = arch.params * weight_bytes
        grads = arch.params * weight_bytes
        optimizer = arch.params * weight_bytes * 2
    elif method == "lora":
        weights = arch.params * weight_bytes + adapters * 4
        grads = adapters * 4
        optimizer = adapters * 8
    elif method == "qlora":
        quantised = arch.layers * arch.layer_matmul_params
        weights = quantised * NF4_BYTES + (arch.params - quantised) * 2 + adapters * 2
        grads = adapters * 2
        optimizer = adapters * 4
    else:
        raise ValueError(method)
    d, k, i = arch.hidden, arch.kv_heads * arch.head_dim, arch.intermediate
    per_layer = 2 * (6 * d + 2 * k + 4 * i)
    if config.model.attn_implementation == "eager":
        per_layer += 2 * arch.heads * row_length
    if method != "full" and lora.dropout > 0:
        shapes = arch.linear_shapes()
        names = list(shapes) if lora.target_modules == "all-linear" else [t for t in lora.target_modules if t in shapes]
        per_layer += 3 * sum(shapes[n][0] for n in names)  # the dropped input (bf16) and its mask (1 byte)
    activations = tokens * per_layer * arch.layers
    checkpointed = tokens * (2 * d * arch.layers + per_layer)
    return {
        "weights": weights,
        "gradients": grads,
        "optimizer": optimizer,
        "activations": activations,
        "activations_checkpointed": checkpointed,
    }


def forward_flops(arch: Architecture, epoch: EpochPlan, trained_tokens: int) -> float:
    """Forward FLOPs of one epoch: block linears per computed position, the fused LM head per trained position,
    attention per query-key pair the kernel computes."""
    return (
        2 * arch.layers * arch.layer_matmul_params * epoch.processed_tokens
        + 2 * arch.hidden * arch.vocab * trained_tokens
        + 4 * arch.layers * arch.heads * arch.head_dim * epoch.attention_pairs
    )


def training_flops(arch: Architecture, epoch: EpochPlan, trained_tokens: int, method: str) -> float:
    return (3 if method == "full" else 2) * forward_flops(arch, epoch, trained_tokens)


# ---------------------------------------------------------------- inputs


def resolve_model_dir(config: Config, model_dir: str | Path | None) -> Path:
    """The folder with config.json and the tokenizer: --model-dir, else model.name_or_path through the one model
    lookup (models.resolve_model_path: a local folder, $DIALSUM_MODEL_DIRS or ../shared/models, the HF cache)."""
    from dialsum.models import lookup_hint, resolve_model_path

    if model_dir is not None:
        path = Path(model_dir)
        if not path.is_dir():
            raise ConfigError(f"--model-dir {path}: no such directory")
        if not (path / "config.json").is_file():
            raise ConfigError(f"--model-dir {path}: no config.json there")
        return path
    name = config.model.name_or_path
    found = resolve_model_path(name, flag="--model-dir")
    if (Path(found) / "config.json").is_file():
        return Path(found)
    try:  # a hub id in the local HF cache: its snapshot folder
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(found, allow_patterns=["*.json", "*.txt", "*.model"], local_files_only=True))
    except Exception:  # noqa: BLE001 - any failure means: not cached
        pass
    raise ConfigError(
        f"model.name_or_path={name}: no local config.json (plan reads config.json and the tokenizer, never "
        f"downloads); {lookup_hint(name, flag='--model-dir')}"
    )


def scale_lengths(lengths: list[int], n: int, seed: int = 0) -> list[int]:
    """`n` lengths with the distribution of `lengths`: whole copies, then a seeded sample for the remainder."""
    whole, rest = divmod(n, len(lengths))
    return lengths * whole + random.Random(seed).sample(lengths, rest)


# ---------------------------------------------------------------- the plan


@dataclass
class Plan:
    model_dir: str
    data: str
    architecture: dict
    params: int
    examples: int
    examples_in_file: int
    trimmed: int
    skipped: int
    real_tokens: int
    trained_tokens: int
    length_percentiles: dict
    world_size: int
    epochs: float
    layouts: dict = field(default_factory=dict)  # padded / packed rows / packed flat: steps, waste, FLOPs
    layout: str = ""  # the one the config trains with
    memory_gb: dict = field(default_factory=dict)  # method -> part -> GB
    method: str = ""  # the config's: full, lora or qlora
    tokens_per_micro_batch: int = 0
    mfu: float = DEFAULT_MFU
    hours: dict = field(default_factory=dict)  # layout -> gpu -> hours for the whole run

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, ensure_ascii=False)


def build_plan(
    config: Config,
    model_dir: str | Path | None = None,
    data: str | Path | None = None,
    train_examples: int | None = None,
    world_size: int = 1,
    mfu: float = DEFAULT_MFU,
) -> Plan:
    from transformers import AutoTokenizer

    from dialsum.data import load_dialogues
    from dialsum.encode import encode_dialogues, ensure_pad_token
    from dialsum.stats import length_percentiles

    if config.model.kind != "causal":
        raise ConfigError("dialsum plan: model.kind=seq2seq is not planned yet (decoder-only models only)")
    if not 0 < mfu <= 1:
        raise ConfigError(f"--mfu {mfu}: expected a fraction in (0, 1]")
    path = data or config.data.train
    if path is None:
        raise ConfigError("nothing to plan: set data.train or pass --data")
    directory = resolve_model_dir(config, model_dir)
    arch = Architecture.from_config(json.loads((directory / "config.json").read_text(encoding="utf-8")))
    tokenizer = AutoTokenizer.from_pretrained(str(directory))
    ensure_pad_token(tokenizer)
    examples, stats = encode_dialogues(tokenizer, load_dialogues(path, config.data.strip_whitespace), config)
    if not examples:
        raise ConfigError(f"{path}: no trainable examples after encoding ({stats.describe()})")
    lengths = [len(e["input_ids"]) for e in examples]
    trained = [sum(1 for label in e["labels"] if label != -100) for e in examples]
    n = train_examples or len(lengths)
    if train_examples:
        lengths, trained = scale_lengths(lengths, n), scale_lengths(trained, n)
    t = config.training
    epochs = t.num_train_epochs if t.max_steps <= 0 else None
    layouts = {  # the same examples and batch, three ways to lay them out
        "padded": dict(packing=False),
        "packed rows": dict(packing=True, unit=t.packing_batch_unit, layout="rows"),
        "packed flat": dict(packing=True, unit=t.packing_batch_unit, layout="flat"),
    }
    runs = {
        name: plan_epoch(
            lengths,
            t.max_length,
            t.per_device_train_batch_size,
            t.gradient_accumulation_steps,
            world_size,
            seed=t.seed,
            **how,
        )
        for name, how in layouts.items()
    }
    layout = (
        ("packed flat" if packing_layout(config.model.attn_implementation) == "flat" else "packed rows")
        if t.packing
        else "padded"
    )
    method = ("qlora" if config.lora.load_in_4bit else "lora") if config.lora.enabled else "full"
    own = runs[layout]
    memory = {}
    for m in ("full", "lora", "qlora"):
        parts = memory_estimate(arch, config, m, own.max_tokens_per_micro_batch, t.max_length)
        memory[m] = {k: v / GB for k, v in parts.items()}
    total_trained = sum(trained)
    layouts, hours = {}, {}
    for name, epoch in runs.items():
        flops = training_flops(arch, epoch, total_trained, method)
        steps_total = epoch.optimizer_steps * math.ceil(epochs) if epochs else t.max_steps
        run_epochs = epochs if epochs else t.max_steps / epoch.optimizer_steps
        layouts[name] = {
            "unit": epoch.unit,
            "optimizer_steps_per_epoch": epoch.optimizer_steps,
            "optimizer_steps_total": steps_total,
            "examples_per_step": round(epoch.examples_per_step, 1),
            "micro_batches_per_epoch": epoch.micro_batches,
            "max_rows_per_micro_batch": epoch.max_rows_per_micro_batch,
            "rows": epoch.rows,
            "max_tokens_per_micro_batch": epoch.max_tokens_per_micro_batch,
            "processed_tokens": epoch.processed_tokens,
            "padding_waste": round(epoch.padding_waste, 4),
            "flops_per_epoch": flops,
            "flops_per_real_token": flops / epoch.real_tokens,
        }
        hours[name] = {
            gpu: flops * run_epochs / (peak * mfu * world_size) / 3600 for gpu, peak in PEAK_BF16_FLOPS.items()
        }
    return Plan(
        model_dir=str(directory),
        data=str(path),
        architecture=asdict(arch),
        params=arch.params,
        examples=n,
        examples_in_file=len(examples),
        trimmed=stats.trimmed,
        skipped=len(stats.skipped_ids),
        real_tokens=sum(lengths),
        trained_tokens=total_trained,
        length_percentiles=length_percentiles(lengths),
        world_size=world_size,
        epochs=epochs if epochs else round(t.max_steps / own.optimizer_steps, 3),
        layouts=layouts,
        layout=layout,
        memory_gb=memory,
        method=method,
        tokens_per_micro_batch=own.max_tokens_per_micro_batch,
        mfu=mfu,
        hours=hours,
    )


def _grid(title: str, corner: str, columns: list[str], rows: dict[str, list[str]], bold: str, console) -> None:
    """A table of rows (a layout or a method each) × columns; where the console is narrower than the wide form
    needs, transposed: one row per quantity, one column per layout/method, so every header reads in full."""
    from rich.table import Table

    wide = 12 + sum(max(len(c), 8) + 3 for c in columns)
    table = Table(title=title)
    if console.width >= wide:
        for column in [corner, *columns]:
            table.add_column(column, justify="left" if column == corner else "right")
        for name, cells in rows.items():
            table.add_row(("[bold]" if name == bold else "") + name, *cells)
    else:
        table.add_column(corner, justify="left")
        for name in rows:
            table.add_column(("[bold]" if name == bold else "") + name, justify="right")
        for index, column in enumerate(columns):
            table.add_row(column, *(cells[index] for cells in rows.values()))
    console.print(table)


def print_plan(plan: Plan, console=None) -> None:
    from rich.console import Console

    console = console or Console()
    a = plan.architecture
    console.print(
        f"[bold]dialsum plan[/] — {a['model_type']} from {plan.model_dir}: {plan.params / 1e9:.2f} B "
        f"parameters (hidden {a['hidden']}, {a['layers']} layers, {a['heads']}/{a['kv_heads']} heads, "
        f"vocab {a['vocab']:,})"
    )
    scaled = ""
    if plan.examples != plan.examples_in_file:
        scaled = f" (length distribution of {plan.examples_in_file} real examples)"
    console.print(
        f"data: {plan.data}: {plan.examples:,} examples{scaled}, {plan.trimmed} trimmed, "
        f"{plan.skipped} skipped; "
        f"{plan.real_tokens:,} tokens, {plan.trained_tokens:,} trained; lengths "
        + ", ".join(f"{k} {v:.0f}" for k, v in plan.length_percentiles.items())
    )
    columns = [
        "steps/epoch",
        "steps total",
        "examples/step",
        "largest micro-batch (rows/tokens)",
        "padding waste",
        "PFLOP/epoch",
        "GFLOP/real token",
        *(f"{gpu} h" for gpu in PEAK_BF16_FLOPS),
    ]
    rows = {
        name: [
            str(row["optimizer_steps_per_epoch"]),
            str(row["optimizer_steps_total"]),
            f"{row['examples_per_step']:.1f}",
            f"{row['max_rows_per_micro_batch']} / {row['max_tokens_per_micro_batch']:,}",
            f"{row['padding_waste']:.1%}",
            f"{row['flops_per_epoch'] / 1e15:,.1f}",
            f"{row['flops_per_real_token'] / 1e9:.2f}",
            *(f"{plan.hours[name][gpu]:.2f}" for gpu in PEAK_BF16_FLOPS),
        ]
        for name, row in plan.layouts.items()
    }
    title = f"one epoch, {plan.world_size} GPU(s); the config trains as: {plan.layout}"
    _grid(title, "layout", columns, rows, plan.layout, console)
    console.print(
        f"hours: {plan.method} fine-tuning, {plan.epochs:g} epoch(s), {plan.world_size} GPU(s), at MFU "
        f"{plan.mfu:.0%} of the bf16 dense peak ("
        + ", ".join(f"{g} {p / 1e12:.0f} TFLOPS" for g, p in PEAK_BF16_FLOPS.items())
        + "). Steps count "
        "optimizer steps; an optimizer step sees per_device_train_batch_size × gradient_accumulation_steps "
        "× GPUs " + ("packed rows." if plan.layouts[plan.layout]["unit"] == "rows" else "examples.")
    )
    columns = ["weights", "gradients", "optimizer", "activations", "total", "activations (ckpt)", "total (ckpt)"]
    rows = {}
    for method, parts in plan.memory_gb.items():
        static = parts["weights"] + parts["gradients"] + parts["optimizer"]
        rows[method] = [
            f"{parts['weights']:.1f}",
            f"{parts['gradients']:.2f}",
            f"{parts['optimizer']:.2f}",
            f"{parts['activations']:.1f}",
            f"{static + parts['activations']:.1f}",
            f"{parts['activations_checkpointed']:.1f}",
            f"{static + parts['activations_checkpointed']:.1f}",
        ]
    title = (
        f"memory per GPU (GB), largest micro-batch: {plan.tokens_per_micro_batch:,} tokens; "
        "plus ~1-3 GB CUDA context and allocator slack"
    )
    _grid(title, "method", columns, rows, plan.method, console)
