"""Generate summaries: batched, left-padded, from exactly the prompt training used (HF), or through vLLM.

The workflow around it (load a model once, predict a split, write it; `dialsum predict`) is `dialsum.predict`.

Generation runs with the config's `generation` section and nothing else: a checkpoint's own
generation_config.json is reported, never merged. Token bans (foreign scripts, n-grams that spare tags)
are `dialsum.suppress`; the decoded text is cleaned by `dialsum.cleanup`.
"""

from __future__ import annotations

import copy
import json
import sys
import weakref
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Sequence

import torch

from dialsum.cleanup import clean_summary
from dialsum.config import Config, token_budget
from dialsum.data import Dialogue
from dialsum.encode import encode_inference_inputs, encode_prompt, end_of_turn_token
from dialsum.errors import ConfigError, DialsumError
from dialsum.models import ADAPTER_CONFIG, InferenceSource
from dialsum.suppress import ForeignScriptSuppressor, NoRepeatNGramExceptTags, suppression_table, tag_token_ids

__all__ = [
    "VllmEngine",
    "apply_cleanup",
    "check_candidates",
    "effective_generation_config",
    "generate_candidates",
    "generate_summaries",
    "lead_baseline",
    "stop_token_ids",
]


# ==================================================================================================
# Batched generation
# ==================================================================================================


def lead_baseline(dialogue: Dialogue) -> str:
    """The first utterance without its speaker tag (`#Person1#` inside the text stays): the LEAD baseline."""
    for turn in dialogue.turns:
        if turn.utterance.strip():
            return " ".join(turn.utterance.split())
    return " ".join(dialogue.preamble.split())


def stop_token_ids(model, tokenizer, kind: str = "causal") -> list[int]:
    """The turn closer first (the token every training label ends with), then EOS and any EOS the
    model's generation config names (Bllossom's says `<|end_of_text|>`, its turns end with `<|eot_id|>`)."""
    ids: list[int] = []

    def add(value):
        for token in value if isinstance(value, (list, tuple)) else [value]:
            if token is not None and int(token) not in ids:
                ids.append(int(token))

    if kind == "causal":
        add(tokenizer.convert_tokens_to_ids(end_of_turn_token(tokenizer)))
    add(tokenizer.eos_token_id)
    generation_config = getattr(model, "generation_config", None)
    if generation_config is not None:
        add(generation_config.eos_token_id)
    if not ids:
        raise DialsumError("the tokenizer has no EOS token and the model's generation config names none")
    return ids


# Decoding knobs a checkpoint's generation_config.json may set that dialsum's generation section decides
# instead; the ids that describe the model's structure (decoder start, BOS) are kept from the checkpoint.
_STRUCTURAL_KEYS = ("decoder_start_token_id", "bos_token_id")


def _generation_kwargs(config: Config) -> dict[str, Any]:
    """Our config is the whole truth: every decoding knob is set, so a model's generation_config.json
    (sampling defaults, BART's min_length / num_beams=4) cannot change what the config says."""
    g = config.generation
    kwargs: dict[str, Any] = dict(
        max_new_tokens=token_budget(g),
        min_length=0,
        num_beams=g.num_beams,
        do_sample=g.do_sample,
        repetition_penalty=g.repetition_penalty,
        use_cache=True,
    )
    if g.num_beams > 1:
        kwargs.update(length_penalty=g.length_penalty, early_stopping=True)
    if g.do_sample:
        kwargs.update(temperature=g.temperature, top_p=g.top_p, top_k=0)
    return kwargs


_REPORTED_IGNORED: "weakref.WeakSet[Any]" = weakref.WeakSet()  # said once per loaded model


def effective_generation_config(model, config: Config, stops: list[int], pad_id: int):
    """The GenerationConfig generation really runs with, and what of the checkpoint's generation_config.json
    it ignores ({key: checkpoint value}) — said, never silently applied: Bllossom's `do_sample: true,
    temperature: 0.6`, Qwen's `repetition_penalty: 1.1`, KoBART's `forced_eos_token_id`.

    Built from scratch (not merged into the checkpoint's), because `generate()` fills every unset field
    from the model's own generation config."""
    from transformers import GenerationConfig

    own = getattr(model, "generation_config", None)
    structural = {key: getattr(own, key, None) for key in _STRUCTURAL_KEYS if getattr(own, key, None) is not None}
    effective = GenerationConfig(
        **_generation_kwargs(config), eos_token_id=list(stops), pad_token_id=pad_id, **structural
    )
    ignored: dict[str, Any] = {}
    if own is not None:
        defaults = GenerationConfig().to_dict()
        mine = effective.to_dict()
        for key, value in own.to_diff_dict().items():
            if key.startswith("_") or key in _STRUCTURAL_KEYS or key == "transformers_version":
                continue
            if key == "eos_token_id":
                continue  # its ids are stop tokens (stop_token_ids)
            if key == "suppress_tokens" and config.generation.suppress_foreign_scripts:
                continue  # an export's static script ban: dialsum's suppressor bans those and more
            if value != mine.get(key, defaults.get(key)):
                ignored[key] = value
    return effective, ignored


def describe_generation(effective, ignored: dict[str, Any]) -> dict[str, Any]:
    """What generation.json holds: the settings used, and the checkpoint's settings that were not."""
    keys = (
        "max_new_tokens",
        "num_beams",
        "do_sample",
        "temperature",
        "top_p",
        "top_k",
        "repetition_penalty",
        "length_penalty",
        "eos_token_id",
        "pad_token_id",
        "decoder_start_token_id",
        "bos_token_id",
    )
    used = {key: getattr(effective, key, None) for key in keys}
    if not effective.do_sample:
        for key in ("temperature", "top_p", "top_k"):
            used.pop(key)
    return {"used": used, "ignored_from_checkpoint": ignored}


def _brief(settings: dict[str, Any]) -> dict[str, Any]:
    """Long id lists (an export's suppress_tokens) as their length, so the note stays one readable line."""
    return {k: f"[{len(v)} ids]" if isinstance(v, list) and len(v) > 8 else v for k, v in settings.items()}


def _cut_at_stop(ids: list[int], stops: set[int]) -> list[int]:
    for i, token in enumerate(ids):
        if token in stops:
            return ids[:i]
    return ids


def generate_summaries(
    model,
    tokenizer,
    dialogues: Sequence[Dialogue],
    config: Config,
    *,
    progress: bool = True,
    label: str = "generate",
    info: dict | None = None,
    cleanup_counts: dict[str, int] | None = None,
    num_return_sequences: int = 1,
    max_new_tokens: Sequence[int] | None = None,
) -> list[str]:
    """One summary per dialogue, in input order (an empty generation is an empty string).

    `num_return_sequences` n > 1: n candidates per dialogue (beams or samples), flat, dialogue i's at
    [i*n, (i+1)*n) (`generate_candidates` groups them). `max_new_tokens`: a token limit per dialogue
    (length control, dialsum.length); a batch generates to its largest and each row is cut to its own.

    Decoder-only: prompts from `encode_prompt` (token for token what training used), left-padded;
    seq2seq: the encoder source trimmed like training. Examples are batched by length (longest
    first, so memory problems show up at once) and restored to input order. Dialogues trimmed to fit
    are counted and said; `info`, when given, receives the trimming counts and the generation settings
    (`describe_generation`). `label` names the progress bar ("generate dev").
    """
    from tqdm.auto import tqdm
    from transformers import LogitsProcessorList

    kind = config.model.kind
    g = config.generation
    inputs, trim = encode_inference_inputs(tokenizer, list(dialogues), config, kind)
    if trim.trimmed:
        print(
            f"inference: {trim.trimmed} of {trim.total} dialogues trimmed to fit training.max_length="
            f"{config.training.max_length} ({trim.turns_cut} turns cut from their ends, as in training)",
            file=sys.stderr,
        )
    stops = stop_token_ids(model, tokenizer, kind)
    closer = tokenizer.convert_ids_to_tokens(stops[0]) if kind == "causal" else None
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stops[0]
    effective, ignored = effective_generation_config(
        model.get_base_model() if hasattr(model, "get_base_model") else model, config, stops, pad_id
    )
    if ignored and model not in _REPORTED_IGNORED:
        _REPORTED_IGNORED.add(model)
        print(
            f"generation: the checkpoint's generation_config.json settings {_brief(ignored)} are ignored; the config's "
            f"generation section decides",
            file=sys.stderr,
        )
    tag_ids = tag_token_ids(tokenizer) if g.no_repeat_ngram_size else []
    if info is not None:
        described = describe_generation(effective, ignored)
        described["used"].update(  # dialsum's own logits processors
            no_repeat_ngram_size=g.no_repeat_ngram_size,
            no_repeat_exempt_tag_tokens=len(tag_ids),
            forbidden_scripts=g.forbidden_scripts if g.suppress_foreign_scripts else [],
        )
        info.update(trimmed=trim.trimmed, turns_cut=trim.turns_cut, cuts=list(trim.cuts), generation=described)
    order = sorted(range(len(inputs)), key=lambda i: len(inputs[i]), reverse=True)
    per_input = num_return_sequences
    results: list[str] = [""] * (len(inputs) * per_input)
    limits = _token_limits(tokenizer, dialogues, config, max_new_tokens)
    device = next(model.parameters()).device
    was_training = model.training
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model  # PEFT: the model generate() reads
    own_generation_config = getattr(inner, "generation_config", None)
    model.eval()
    bar = tqdm(total=len(inputs), desc=label, unit="dlg", disable=not progress, file=sys.stderr)
    try:
        inner.generation_config = effective  # generate() fills unset fields from it: nothing else may leak in
        with torch.inference_mode():
            for start in range(0, len(order), g.batch_size):
                batch = order[start : start + g.batch_size]
                width = max(len(inputs[i]) for i in batch)
                ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
                mask = torch.zeros((len(batch), width), dtype=torch.long)
                for row, i in enumerate(batch):
                    n = len(inputs[i])
                    if kind == "causal":  # left padding: every prompt ends where generation starts
                        ids[row, width - n :] = torch.tensor(inputs[i])
                        mask[row, width - n :] = 1
                    else:
                        ids[row, :n] = torch.tensor(inputs[i])
                        mask[row, :n] = 1
                processors = LogitsProcessorList()
                if g.no_repeat_ngram_size:
                    processors.append(
                        NoRepeatNGramExceptTags(
                            g.no_repeat_ngram_size, tag_ids, prompt_length=width if kind == "causal" else 0
                        )
                    )
                if g.suppress_foreign_scripts and g.forbidden_scripts:
                    processors.append(
                        ForeignScriptSuppressor(
                            tokenizer,
                            g.forbidden_scripts,
                            prompt_length=width if kind == "causal" else None,  # seq2seq: the decoder start
                            keep_token_ids=stops + [pad_id],
                        )
                    )
                batch_config = effective  # one settings object: generate() warns on settings passed beside it
                if limits is not None or per_input > 1:
                    batch_config = copy.deepcopy(effective)
                    batch_config.num_return_sequences = per_input
                    if limits is not None:
                        batch_config.max_new_tokens = max(limits[i] for i in batch)
                output = model.generate(
                    input_ids=ids.to(device),
                    attention_mask=mask.to(device),
                    generation_config=batch_config,
                    logits_processor=processors,
                )
                skip = width if kind == "causal" else 1  # the prompt, or the decoder start token
                stop_set = set(stops)
                for row, (i, c) in enumerate((i, c) for i in batch for c in range(per_input)):
                    generated = _cut_at_stop(output[row, skip:].tolist(), stop_set)
                    if limits is not None:
                        generated = generated[: limits[i]]
                    text = tokenizer.decode(generated, skip_special_tokens=True, clean_up_tokenization_spaces=False)
                    results[i * per_input + c] = clean_summary(text, tokenizer, end_token=closer)
                bar.update(len(batch))
    finally:
        bar.close()
        inner.generation_config = own_generation_config
        if was_training:
            model.train()
    per_row: list[list[str]] | None = [] if info is not None and per_input == 1 else None
    cleaned = apply_cleanup(results, config, cleanup_counts, per_row)
    if per_row is not None:
        info["cleaned"] = per_row
    return cleaned


def _token_limits(tokenizer, dialogues, config: Config, given: Sequence[int] | None) -> list[int] | None:
    """Per-dialogue token limits: given, or from the length rule when generation.max_new_tokens is 'auto'."""
    if given is not None:
        if len(given) != len(dialogues):
            raise ValueError(f"max_new_tokens: {len(given)} limits for {len(dialogues)} dialogues")
        return [int(x) for x in given]
    if config.generation.max_new_tokens != "auto":
        return None
    from dialsum.length import limits_for

    return limits_for(config.generation, tokenizer, dialogues, config.data.train)


def check_candidates(config: Config, n: int) -> None:
    g = config.generation
    if n > 1 and not g.do_sample and g.num_beams < n:
        raise ConfigError(
            f"--num-candidates {n} needs generation.do_sample=true or generation.num_beams >= {n} "
            f"(now num_beams={g.num_beams}, do_sample=false): greedy decoding has one candidate"
        )


def generate_candidates(
    model, tokenizer, dialogues: Sequence[Dialogue], config: Config, n: int, **kwargs
) -> list[list[str]]:
    """n candidates per dialogue (the n best beams, or n samples with generation.do_sample), in input order."""
    check_candidates(config, n)
    flat = generate_summaries(model, tokenizer, dialogues, config, num_return_sequences=n, **kwargs)
    return [flat[i * n : (i + 1) * n] for i in range(len(dialogues))]


def apply_cleanup(
    summaries: list[str], config: Config, counts: dict[str, int] | None, per_row: list[list[str]] | None = None
) -> list[str]:
    """The config's clean-up steps (dialsum.cleanup); what each changed is added to `counts` when given, and the
    steps that changed each summary to `per_row` (for the error-analysis page)."""
    from dialsum.cleanup import clean_all

    cleaned, changed = clean_all(summaries, config.cleanup, config.generation.forbidden_scripts, changes=per_row)
    if counts is not None:
        for step, n in changed.items():
            counts[step] = counts.get(step, 0) + n
    return cleaned


# ==================================================================================================
# vLLM (decoder-only, CUDA)
# ==================================================================================================


def _checkpoint_generation_config(model_dir):
    """The checkpoint's generation_config.json (its EOS ids are stop tokens), or None where it has none."""
    from transformers import GenerationConfig

    try:
        return GenerationConfig.from_pretrained(str(model_dir))
    except OSError:
        return None


class VllmEngine:
    """vLLM backend over one inference source: the engine is built once (that is the model load) and then generates
    under any config's decoding settings (a `dialsum tune` trial, a request). Same prompt ids, same stop tokens.
    Suppression here is the static mask only (`allowed_token_ids`); the per-step byte-fragment check needs the HF
    backend."""

    def __init__(self, source: InferenceSource):
        config = source.config
        self.check(config)
        try:
            from vllm import LLM
            from vllm.lora.request import LoRARequest
        except ImportError:
            raise DialsumError(
                "generation.backend=vllm needs vLLM, which is not installed: pip install 'dialsum[vllm]'"
            ) from None
        from dialsum.models import has_cuda, load_tokenizer, resolve_model_path

        if not has_cuda():
            raise DialsumError(
                "generation.backend=vllm needs a CUDA GPU; none is available (use generation.backend=hf)"
            )
        self.tokenizer = load_tokenizer(source.model_dir, config)
        self.closer = end_of_turn_token(self.tokenizer)
        weights_dir = resolve_model_path(config.model.name_or_path) if source.adapter else source.model_dir
        checkpoint = SimpleNamespace(generation_config=_checkpoint_generation_config(weights_dir))
        self.stops = stop_token_ids(checkpoint, self.tokenizer)
        llm_kwargs: dict[str, Any] = dict(
            model=str(weights_dir),
            tokenizer=str(source.model_dir),
            dtype=config.model.dtype,
            max_model_len=config.training.max_length,
            trust_remote_code=config.model.trust_remote_code,
            seed=config.training.seed,
        )
        self.lora = None
        if source.adapter:
            rank = json.loads((Path(source.model_dir) / ADAPTER_CONFIG).read_text(encoding="utf-8")).get("r", 16)
            llm_kwargs.update(enable_lora=True, max_lora_rank=vllm_lora_rank(int(rank)))
            self.lora = LoRARequest("dialsum", 1, str(source.model_dir))
        self.llm = LLM(**llm_kwargs)

    @staticmethod
    def check(config: Config) -> None:
        """What vLLM cannot do, said before anything loads."""
        g = config.generation
        if config.model.kind != "causal":
            raise ConfigError(
                "generation.backend=vllm supports decoder-only models only; use generation.backend=hf for seq2seq"
            )
        if g.num_beams > 1 or g.no_repeat_ngram_size:
            raise ConfigError("generation.num_beams > 1 and no_repeat_ngram_size need generation.backend=hf")
        if g.max_new_tokens == "auto":
            raise ConfigError("generation.max_new_tokens=auto (per-dialogue limits) needs generation.backend=hf")

    def generate(self, dialogues: Sequence[Dialogue], config: Config, progress: bool = True) -> list[str]:
        from vllm import SamplingParams

        self.check(config)
        g = config.generation
        allowed = None
        if g.suppress_foreign_scripts and g.forbidden_scripts:
            print(
                "generation.backend=vllm: foreign-script suppression is the static mask only (allowed_token_ids); "
                "byte fragments that combine into a forbidden character can pass (generation.backend=hf checks "
                "them)",
                file=sys.stderr,
            )
            table = suppression_table(self.tokenizer, g.forbidden_scripts)
            special = set(self.tokenizer.all_special_ids) - set(self.stops)
            allowed = [i for i in range(table.size) if not table.static_bad[i] and i not in special]
        params = SamplingParams(
            max_tokens=g.max_new_tokens,
            temperature=g.temperature if g.do_sample else 0.0,
            top_p=g.top_p if g.do_sample else 1.0,
            repetition_penalty=g.repetition_penalty,
            stop_token_ids=self.stops,
            skip_special_tokens=True,
            seed=config.training.seed,
            allowed_token_ids=allowed,
        )
        prompts = [{"prompt_token_ids": encode_prompt(self.tokenizer, d, config)} for d in dialogues]
        outputs = self.llm.generate(prompts, params, lora_request=self.lora, use_tqdm=progress)
        return [clean_summary(output.outputs[0].text, self.tokenizer, end_token=self.closer) for output in outputs]


def vllm_lora_rank(rank: int) -> int:
    """vLLM's `max_lora_rank` for an adapter of rank `rank`: the next of its supported sizes (8, 16, 32, 64, ...);
    its default of 16 refuses larger adapters."""
    return max(8, 1 << (int(rank) - 1).bit_length())
