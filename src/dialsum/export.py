"""`dialsum export`: a finished run as a model anyone can load with plain transformers (or push to the Hub).

The traps this exists for: a QLoRA adapter merged into 4-bit weights (it scores lower than the adapter), a served
model that rambles because its chat template or stop token differ from training, a checkpoint's sampling defaults
silently deciding decoding. So: the adapter is merged into a base loaded fresh at the training dtype (bf16 from the
original weights under QLoRA), the merge is checked against the unmerged model on a few dev dialogues before
anything is written (same greedy summaries, logits within `PARITY_TOLERANCE`), and generation_config.json is
written from the run's generation settings with the turn closer among the stop tokens. The model card
(dialsum.card) says the prompt, the decoding, the dev scores and how to reproduce the prompt in plain transformers.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from dialsum.config import Config
from dialsum.data import Dialogue
from dialsum.errors import DialsumError, RunDirError
from dialsum.rundir import CONFIG_FILE, EXPORT_CONFIG_FILE, EXPORT_PARITY_FILE, MODEL_CARD_FILE, MODEL_DIR

__all__ = [
    "PARITY_TOLERANCE",
    "ParityError",
    "export",
    "export_generation_config",
    "merge_adapter",
    "merge_dtype",
    "push_to_hub",
]

# Largest |logit difference| allowed between the merged and the unmerged model, per weight dtype: merging moves
# B·A into W, which only reorders floating-point sums; a wrong merge (4-bit weights, a doubled or missing delta)
# moves logits by whole units.
PARITY_TOLERANCE = {"float32": 1e-3, "bfloat16": 0.15, "float16": 0.05}
PARITY_DIALOGUES = 3  # dev dialogues the check generates
PARITY_MAX_NEW_TOKENS = 24


class ParityError(DialsumError):
    """The exported model does not reproduce the run's model."""


def merge_dtype(config: Config):
    """The dtype the adapter is merged at: the base's training dtype; under QLoRA bf16 from the original weights
    (never the 4-bit weights, whose dequantized copy is not what the adapter was trained beside in full precision)."""
    import torch

    from dialsum.models import training_weight_dtype

    if config.lora.enabled and config.lora.load_in_4bit:
        return torch.bfloat16
    return training_weight_dtype(config)


def merge_adapter(model):
    """PEFT's merge: W += scale · B·A for every adapted layer, then the plain transformers model."""
    return model.merge_and_unload()


@dataclass
class _Reference:
    summaries: list[str]
    sequences: list[list[int]]  # prompt + generated ids, where logits are compared
    logits: list[Any]


def _parity_config(config: Config) -> Config:
    """Greedy, short: the parity check compares decisions, not a sampled draw."""
    raw = config.model_copy(deep=True)
    raw.generation.do_sample = False
    raw.generation.num_beams = 1
    raw.generation.max_new_tokens = PARITY_MAX_NEW_TOKENS
    return raw


def _logits(model, sequence: list[int], kind: str, decoder_start: int | None):
    import torch

    device = next(model.parameters()).device
    with torch.inference_mode():
        if kind == "causal":
            out = model(input_ids=torch.tensor([sequence], device=device), use_cache=False).logits[0]
            return out[-64:].float().cpu()
        source, target = sequence
        out = model(
            input_ids=torch.tensor([source], device=device),
            decoder_input_ids=torch.tensor([[decoder_start, *target]], device=device),
            use_cache=False,
        ).logits[0]
        return out.float().cpu()


def _reference(model, tokenizer, dialogues: Sequence[Dialogue], config: Config) -> _Reference:
    from dialsum.encode import encode_inference_inputs
    from dialsum.generate import generate_summaries

    parity = _parity_config(config)
    summaries = generate_summaries(model, tokenizer, dialogues, parity, progress=False)
    inputs, _ = encode_inference_inputs(tokenizer, list(dialogues), parity, config.model.kind)
    sequences: list[Any] = []
    for ids, summary in zip(inputs, summaries):
        target = tokenizer(summary, add_special_tokens=False)["input_ids"][:PARITY_MAX_NEW_TOKENS]
        sequences.append([*ids, *target] if config.model.kind == "causal" else [ids, target])
    start = getattr(getattr(model, "generation_config", None), "decoder_start_token_id", None)
    logits = [_logits(model, s, config.model.kind, start) for s in sequences]
    return _Reference(summaries, sequences, logits)


def check_parity(reference: _Reference, model, tokenizer, dialogues, config: Config, dtype_name: str) -> dict:
    """The candidate against the reference: the same greedy summaries, logits within the dtype's tolerance.
    Raises ParityError naming the first dialogue that differs."""
    from dialsum.generate import generate_summaries

    summaries = generate_summaries(model, tokenizer, dialogues, _parity_config(config), progress=False)
    tolerance = PARITY_TOLERANCE.get(dtype_name, PARITY_TOLERANCE["float32"])
    worst = 0.0
    for dialogue, want, got, a, b in zip(
        dialogues, reference.summaries, summaries, reference.logits, _candidate_logits(model, reference)
    ):
        difference = float((a - b).abs().max())
        worst = max(worst, difference)
        if difference > tolerance:
            raise ParityError(
                f"export parity check failed on dev dialogue {dialogue.id}: the exported model's logits differ from "
                f"the run's model's by {difference:.4g} (> PARITY_TOLERANCE[{dtype_name}] = {tolerance}); "
                f"nothing was written"
            )
        if want != got:
            raise ParityError(
                f"export parity check failed on dev dialogue {dialogue.id}: greedy summary {got!r} differs from "
                f"the run's model's {want!r}; nothing was written"
            )
    return {
        "dialogues": [d.id for d in dialogues],
        "max_abs_logit_difference": worst,
        "tolerance": tolerance,
        "dtype": dtype_name,
        "summaries_equal": True,
    }


def _candidate_logits(model, reference: _Reference):
    start = getattr(getattr(model, "generation_config", None), "decoder_start_token_id", None)
    kind = "causal" if isinstance(reference.sequences[0][0], int) else "seq2seq"
    return [_logits(model, s, kind, start) for s in reference.sequences]


def export_generation_config(model, tokenizer, config: Config):
    """generation_config.json as dialsum decodes: built from the run's generation section alone (the checkpoint's
    do_sample/temperature/... do not survive), the turn closer first among the stop tokens, and the static
    foreign-script ban as `suppress_tokens` (the byte-fragment check and the tag-sparing n-gram ban are dialsum
    logits processors; the card says so)."""
    from dialsum.generate import effective_generation_config, stop_token_ids

    stops = stop_token_ids(model, tokenizer, config.model.kind)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stops[0]
    effective, _ = effective_generation_config(model, config, stops, pad_id)
    effective.use_cache = True
    g = config.generation
    if g.suppress_foreign_scripts and g.forbidden_scripts:
        from dialsum.suppress import suppression_table

        table = suppression_table(tokenizer, g.forbidden_scripts)
        keep = set(stops) | {pad_id}
        banned = [int(i) for i in table.static_bad.nonzero()[0] if int(i) not in keep]
        if banned:
            effective.suppress_tokens = banned
    return effective


def _dev_dialogues(config: Config, n: int) -> list[Dialogue]:
    from dialsum.data import load_dialogues

    for path in (config.data.dev, config.data.train):
        if path and Path(path).is_file():
            return load_dialogues(path)[:n]
    raise RunDirError(
        f"the parity check needs a few dialogues: the run's data.dev ({config.data.dev}) and data.train "
        f"({config.data.train}) are not readable from {Path.cwd()}; run export from where the run was trained"
    )


def _load_models(source, config: Config, merge: bool):
    """(model, tokenizer, dtype name): the run's model at the export dtype; for LoRA the unmerged PEFT model on a base
    loaded fresh at the merge dtype (`merge_adapter` merges it after the reference outputs are taken)."""
    from dialsum.models import load_model, load_tokenizer

    tokenizer = load_tokenizer(source.model_dir, config)
    dtype = merge_dtype(config)
    dtype_name = str(dtype).removeprefix("torch.")
    at_dtype = config.model_copy(deep=True)
    at_dtype.model.dtype = dtype_name
    if config.model.kind == "causal":
        tokenizer.padding_side = "left"
    if source.adapter:
        from peft import PeftModel

        base = load_model(config.model.name_or_path, at_dtype)
        if len(tokenizer) > base.get_input_embeddings().num_embeddings:
            base.resize_token_embeddings(len(tokenizer))
        model = PeftModel.from_pretrained(base, str(source.model_dir))
    else:
        model = load_model(source.model_dir, at_dtype)
    from dialsum.models import has_cuda

    if has_cuda():
        model.to("cuda")
    model.eval()
    return model, tokenizer, dtype_name


def export(
    run_dir: str | Path,
    output: str | Path,
    merge: bool = True,
    overwrite: bool = False,
    push_repo: str | None = None,
    private: bool = False,
    dry_run: bool = False,
    merge_fn: Callable | None = None,
) -> dict[str, Any]:
    """Export a run directory into `output` (atomically): merged safetensors weights, or with merge=False the adapter
    with a pointer to its base; tokenizer and chat template; generation_config.json; README.md model card;
    dialsum.yaml (so `dialsum serve` and `dialsum predict` read the export like the run). Returns what was done."""
    from dialsum.card import model_card
    from dialsum.models import resolve_inference_source
    from dialsum.writer import OutputPlan, atomic_directory, write_json, write_text

    run_dir = Path(run_dir)
    if not (run_dir / CONFIG_FILE).is_file():
        raise RunDirError(f"{run_dir}: not a run directory (no {CONFIG_FILE}); export takes what dialsum train wrote")
    OutputPlan([run_dir, run_dir / MODEL_DIR], overwrite).directory(output, "--output")
    output = Path(output)
    if push_repo is not None:
        check_repo_id(push_repo)
    source = resolve_inference_source(run_dir)
    config = source.config
    dialogues = _dev_dialogues(config, PARITY_DIALOGUES)
    model, tokenizer, dtype_name = _load_models(source, config, merge)
    reference = _reference(model, tokenizer, dialogues, config)  # what the run's model says, before any change
    parity: dict[str, Any] = {}
    if source.adapter and merge:
        print(f"export: merging the adapter into {config.model.name_or_path} at {dtype_name}", file=sys.stderr)
        model = (merge_fn or merge_adapter)(model)
        parity["merged"] = check_parity(reference, model, tokenizer, dialogues, config, dtype_name)
    weights_model = model.get_base_model() if hasattr(model, "get_base_model") else model
    generation_config = export_generation_config(weights_model, tokenizer, config)
    exported = config.model_copy(deep=True)
    merged = merge or not source.adapter
    with atomic_directory(output) as staging:
        if not merged:
            for name in ("adapter_config.json", "adapter_model.safetensors"):
                shutil.copy2(Path(source.model_dir) / name, staging / name)
            _point_at_base(staging / "adapter_config.json", config)
        else:
            weights_model.config.use_cache = True  # training turned the cache off (packing); inference wants it
            weights_model.generation_config = generation_config
            weights_model.save_pretrained(str(staging), safe_serialization=True)
            exported.model.name_or_path = "."  # the export itself (models.resolve_inference_source)
            exported.model.dtype = dtype_name
            exported.lora.enabled = False
            exported.lora.load_in_4bit = False
        generation_config.save_pretrained(str(staging))
        tokenizer.save_pretrained(str(staging))
        if merged:  # the files as written, reloaded by plain transformers, against the run's model
            del model, weights_model
            parity["reloaded"] = check_parity(
                reference, _reload(staging, config, dtype_name), tokenizer, dialogues, config, dtype_name
            )
        for what, check in parity.items():
            print(
                f"export: parity ok ({what}) on {len(dialogues)} dev dialogues: same greedy summaries, max |logit "
                f"difference| {check['max_abs_logit_difference']:.2e} <= {check['tolerance']}",
                file=sys.stderr,
            )
        from dialsum.config import save_config

        save_config(exported, staging / EXPORT_CONFIG_FILE)
        if parity:
            write_json(staging / EXPORT_PARITY_FILE, parity)
        write_text(
            staging / MODEL_CARD_FILE,
            model_card(run_dir, config, tokenizer, generation_config, merged=merged, parity=parity or None),
        )
    files = sorted(str(p.relative_to(output)) for p in output.rglob("*") if p.is_file())
    kind = "merged model" if source.adapter and merge else ("adapter" if source.adapter else "model")
    print(f"exported {kind} to {output} ({len(files)} files)")
    result = {"output": str(output), "kind": kind, "files": files, "parity": parity, "pushed": None}
    if push_repo is not None:
        result["pushed"] = push_to_hub(output, push_repo, private=private, dry_run=dry_run)
    return result


def _reload(directory: Path, config: Config, dtype_name: str):
    """The staged export through plain transformers, as a user will load it."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    auto = AutoModelForCausalLM if config.model.kind == "causal" else AutoModelForSeq2SeqLM
    model = auto.from_pretrained(str(directory), dtype=getattr(torch, dtype_name))
    if torch.cuda.is_available():
        model.to("cuda")
    return model.eval()


def _point_at_base(adapter_config: Path, config: Config) -> None:
    """--no-merge: the adapter names its base as the run's config does (a hub id), not a path on this machine."""
    from dialsum.writer import write_json

    data = json.loads(adapter_config.read_text(encoding="utf-8"))
    data["base_model_name_or_path"] = config.model.name_or_path
    if config.model.revision:
        data["revision"] = config.model.revision
    write_json(adapter_config, data)


def check_repo_id(repo: str) -> None:
    import re

    if not re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", repo) or ".." in repo or len(repo) > 96:
        raise DialsumError(f"--push-to-hub {repo}: not a Hub repository id (expected OWNER/NAME)")


def push_to_hub(folder: str | Path, repo: str, private: bool = False, dry_run: bool = False) -> dict[str, Any]:
    """Upload a complete export through huggingface_hub (token from HF_TOKEN or `hf auth login`). A dry run lists
    what would go up. Offline or refused: a DialsumError whose one line says the export itself is complete."""
    folder = Path(folder)
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    if dry_run:
        visibility = "private" if private else "public"
        print(f"dry run: would upload {len(files)} files to https://huggingface.co/{repo} ({visibility}):")
        for path in files:
            print(f"  {path.relative_to(folder)}  {path.stat().st_size:,} bytes")
        return {"repo": repo, "dry_run": True, "files": [str(p.relative_to(folder)) for p in files]}
    later = f"the export in {folder} is complete; push it later with: hf upload {repo} {folder}"
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        raise DialsumError(f"--push-to-hub {repo}: not pushed, HF_HUB_OFFLINE is set (no network); {later}")
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError, LocalTokenNotFoundError

    api = HfApi()
    try:
        api.create_repo(repo, private=private, exist_ok=True, repo_type="model")
        commit = api.upload_folder(folder_path=str(folder), repo_id=repo, repo_type="model")
    except LocalTokenNotFoundError:
        raise DialsumError(
            f"--push-to-hub {repo}: no Hugging Face token (set HF_TOKEN or run `hf auth login`); {later}"
        )
    except HfHubHTTPError as error:
        raise DialsumError(f"--push-to-hub {repo}: the Hub refused ({str(error).splitlines()[0]}); {later}") from None
    except OSError as error:  # no route, DNS, timeouts
        raise DialsumError(f"--push-to-hub {repo}: not pushed, no network ({type(error).__name__}); {later}") from None
    print(f"pushed {len(files)} files to https://huggingface.co/{repo}")
    return {"repo": repo, "dry_run": False, "commit": getattr(commit, "oid", None)}
