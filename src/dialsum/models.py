"""Load tokenizers and models the safe way, and resolve what to generate with.

Weights load as safetensors, or a `.bin` through torch's `weights_only=True` loader (which refuses pickled
code); remote code stays off unless the config turns it on. `resolve_inference_source` turns a run directory,
its `model/`, or any checkpoint into the config and weights `predict` uses (a LoRA adapter merged on its base).
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from dialsum.config import Config, config_from_dict, load_config
from dialsum.errors import ConfigError, RunDirError
from dialsum.rundir import CONFIG_FILE, EXPORT_CONFIG_FILE, MODEL_DIR


def has_cuda() -> bool:
    return torch.cuda.is_available()


def use_bf16(config: Config) -> bool:
    if config.training.bf16 == "auto":
        return has_cuda() and torch.cuda.is_bf16_supported()
    return config.training.bf16 == "true"


def torch_dtype(config: Config) -> torch.dtype:
    """Inference weights: bf16 where the GPU supports it, fp32 on the CPU (CPU bf16 matmuls are slow and lossy)."""
    if config.model.dtype != "auto":
        return getattr(torch, config.model.dtype)
    return torch.bfloat16 if use_bf16(config) else torch.float32


# The precision policy, in one sentence (README and summary.json repeat it):
PRECISION_POLICY = (
    "full fine-tuning keeps fp32 master weights and fp32 AdamW state and computes under bf16 autocast where "
    "supported; LoRA trains fp32 adapters (bf16 under QLoRA, as TRL does) on a frozen bf16, fp32 or 4-bit base"
)


def compute_dtype(config: Config) -> torch.dtype:
    """The autocast dtype of training: bf16 where asked for or supported; under QLoRA on a GPU without bf16, fp16
    (4-bit matmuls need a half-precision compute dtype); otherwise fp32 (no autocast)."""
    if use_bf16(config):
        return torch.bfloat16
    if config.lora.enabled and config.lora.load_in_4bit and has_cuda() and config.training.bf16 == "auto":
        return torch.float16
    return torch.float32


def training_weight_dtype(config: Config) -> torch.dtype:
    """The dtype the weights load in for training. Full fine-tuning: fp32 master weights, because AdamW updates of
    bf16 weights round away (at lr 2e-5 most updates are below bf16's resolution). LoRA: the frozen base may be half
    precision, since only the adapters are updated."""
    if config.model.dtype != "auto":
        return getattr(torch, config.model.dtype)
    if config.lora.enabled:
        return compute_dtype(config)
    return torch.float32


def precision_warning(config: Config) -> str | None:
    """The one line a user gets who asks for half-precision weights with full fine-tuning."""
    if config.lora.enabled or config.model.dtype not in ("bfloat16", "float16"):
        return None
    return (
        f"model.dtype={config.model.dtype} with full fine-tuning: AdamW updates the {config.model.dtype} weights "
        "directly and updates smaller than their resolution round away (at lr 2e-5 most weights stop changing); "
        "use model.dtype=auto for fp32 master weights with bf16 autocast"
    )


TINY_PREFIX = "tiny:"
MODEL_DIRS_ENV = "DIALSUM_MODEL_DIRS"  # folders holding models by name (e.g. ../shared/models), os.pathsep-separated
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def model_roots() -> list[Path]:
    """Where a model is looked up by name: $DIALSUM_MODEL_DIRS, then ../shared/models."""
    roots = [Path(p) for p in os.environ.get(MODEL_DIRS_ENV, "").split(os.pathsep) if p]
    return roots + [Path("../shared/models")]


def _label(what: str, name: str) -> str:
    return f"{what} {name}" if what.startswith("--") else f"{what}={name}"


def lookup_hint(name: str, what: str = "model.name_or_path", flag: str = "--model") -> str:
    """What to do when a model cannot be reached: the flag, and the folder name the lookup would find."""
    folder = name.rstrip("/").split("/")[-1].lower()
    local = f"pass {flag} DIR" if what == "model.name_or_path" else f"pass a local folder as {what}"
    return f"{local}, or put a folder named {folder} under ${MODEL_DIRS_ENV} (or ../shared/models)"


def _in_hub_cache(name: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    for filename in ("config.json", "tokenizer_config.json"):
        try:
            if isinstance(try_to_load_from_cache(name, filename), str):
                return True
        except Exception:  # noqa: BLE001 - an id the cache cannot even look up is not cached
            return False
    return False


def resolve_model_path(
    name_or_path: str | Path, what: str = "model.name_or_path", weights: bool = False, flag: str = "--model"
) -> str:
    """The one lookup of a model name, for train, inspect, predict, screen and plan.

    In order: `tiny:llama` (qwen2, qwen3, bart; built on first use), an existing local folder, a folder named like
    the repo (lower case) under $DIALSUM_MODEL_DIRS or ../shared/models (with `weights`, only one holding weights),
    a hub id in the local HF cache, a hub id when the hub may be reached. A path that is not there says "no such
    directory"; a hub id offline and not cached says so and names --model and $DIALSUM_MODEL_DIRS."""
    name = str(name_or_path)
    if name.startswith(TINY_PREFIX):
        from dialsum.tiny import ARCHES, tiny_model_cached

        arch = name[len(TINY_PREFIX) :]
        if arch not in ARCHES:
            raise ConfigError(f"{_label(what, name)}: tiny models are " + ", ".join(TINY_PREFIX + a for a in ARCHES))
        return str(tiny_model_cached(arch))
    path = Path(name).expanduser()
    if path.is_dir():
        return str(path) if name.startswith("~") else name
    first = name.split("/")[0]
    if path.exists():
        raise ConfigError(f"{_label(what, name)}: not a directory (a model is a folder, or a hub id)")
    if not _HUB_ID.match(name) or (name.count("/") == 1 and Path(first).is_dir()):
        raise ConfigError(f"{_label(what, name)}: no such directory")
    weightless = None
    for root in model_roots():
        candidate = root / name.split("/")[-1].lower()
        if (candidate / "config.json").is_file() or (candidate / "tokenizer_config.json").is_file():
            if not weights or weights_format(candidate):
                return str(candidate)
            weightless = weightless or candidate
    if _in_hub_cache(name):
        return name
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        found = f"; {weightless} has its config and tokenizer but no weights" if weightless else ""
        raise ConfigError(
            f"{_label(what, name)}: not a local folder, and the hub is offline (HF_HUB_OFFLINE) with no copy in the "
            f"HF cache{found}; {lookup_hint(name, what, flag)}"
        )
    return name


# A folder holds a tokenizer when it has one of these (fast tokenizers, sentencepiece, BPE vocabularies)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt", "spiece.model")


def load_tokenizer(name_or_path: str | Path, config: Config):
    from transformers import AutoTokenizer

    local = Path(resolve_model_path(name_or_path))
    if local.is_dir() and not any((local / name).is_file() for name in TOKENIZER_FILES):
        raise ConfigError(
            f"model.name_or_path={name_or_path}: the folder has no tokenizer files ({', '.join(TOKENIZER_FILES)}); "
            "save the tokenizer beside the weights (tokenizer.save_pretrained)"
        )
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            resolve_model_path(name_or_path),
            trust_remote_code=config.model.trust_remote_code,
            revision=config.model.revision,
        )
    except OSError as error:  # an unreachable hub, a repo id that does not exist
        raise ConfigError(
            f"model.name_or_path={name_or_path}: cannot load the tokenizer: {str(error).splitlines()[0]}"
            + _hub_hint(name_or_path)
        ) from None
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if getattr(tokenizer, "clean_up_tokenization_spaces", False) and type(getattr(backend, "model", None)).__name__ == (
        "BPE"
    ):
        # transformers skips this clean-up for BPE anyway, and says so mid-output at the first decode: same text, no
        # warning
        tokenizer.clean_up_tokenization_spaces = False
    return tokenizer


def _hub_hint(name_or_path: str | Path) -> str:
    """For a hub id that failed to load (no network, gated, misspelt): where else a model can come from."""
    return "" if Path(str(name_or_path)).is_dir() else f" ({lookup_hint(str(name_or_path))})"


def qlora_settings(config: Config) -> dict:
    """QLoRA's BitsAndBytesConfig arguments: NF4 with double quantization, computing in the training compute dtype
    (bf16 on GPUs that support it, fp16 otherwise). Plain data, so it is testable without CUDA or bitsandbytes."""
    return dict(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute_dtype(config),
    )


def kbit_training_settings(config: Config) -> dict:
    """Arguments of peft's prepare_model_for_kbit_training: checkpointing as the config says, non-reentrant."""
    return dict(
        use_gradient_checkpointing=config.training.gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False},
    )


def quantization_config(config: Config):
    """QLoRA: 4-bit NF4 base weights through bitsandbytes, which needs a CUDA GPU."""
    if not config.lora.load_in_4bit:
        return None
    if not config.lora.enabled:
        raise ConfigError("lora.load_in_4bit=true needs lora.enabled=true (QLoRA trains adapters on a 4-bit base)")
    if not has_cuda():
        raise ConfigError("lora.load_in_4bit=true (QLoRA) needs a CUDA GPU; none is available on this machine")
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise ConfigError("lora.load_in_4bit=true needs bitsandbytes: pip install 'dialsum[qlora]'") from None
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(**qlora_settings(config))


def weights_format(path: str | Path) -> str | None:
    """'safetensors' or 'bin' for a local model directory (safetensors preferred), None when it has neither
    (a hub id, or a directory transformers will report on)."""
    directory = Path(path)
    if not directory.is_dir():
        return None
    if any(directory.glob("*.safetensors")):
        return "safetensors"
    if any(directory.glob("pytorch_model*.bin")):
        return "bin"
    return None


def load_model(name_or_path: str | Path, config: Config, for_training: bool = False):
    """AutoModelForCausalLM or AutoModelForSeq2SeqLM per `model.kind`. Weights from safetensors when the
    checkpoint has them; a checkpoint with only `pytorch_model.bin` (digit82/kobart-summarization) is read
    with torch's `weights_only=True` loader, which refuses pickled code. The console says which format."""
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    auto_class = AutoModelForCausalLM if config.model.kind == "causal" else AutoModelForSeq2SeqLM
    path = resolve_model_path(name_or_path, weights=True)
    fmt = weights_format(path)
    kwargs = dict(
        dtype=training_weight_dtype(config) if for_training else torch_dtype(config),
        trust_remote_code=config.model.trust_remote_code,
        revision=config.model.revision,
        use_safetensors=fmt != "bin",
        weights_only=True,
        attn_implementation=config.model.attn_implementation if config.model.kind == "causal" else None,
    )
    if for_training:
        kwargs["quantization_config"] = quantization_config(config)
    if config.model.attn_implementation == "flash_attention_2" and not has_cuda():
        raise ConfigError("model.attn_implementation=flash_attention_2 needs a CUDA GPU; use sdpa on the CPU")
    import pickle

    try:
        model = auto_class.from_pretrained(path, **{k: v for k, v in kwargs.items() if v is not None})
    except (pickle.UnpicklingError, RuntimeError) as error:
        if fmt != "bin":
            raise
        import re

        found = re.search(r"unsupported GLOBAL (\S+)", str(error), re.IGNORECASE)
        what = f"it would call {found.group(1)}" if found else type(error).__name__
        raise ConfigError(
            f"model.name_or_path={name_or_path}: pytorch_model.bin refused by torch's weights_only "
            f"loader ({what}; a checkpoint must hold tensors only); nothing was executed"
        ) from None
    except OSError as error:
        raise ConfigError(
            f"model.name_or_path={name_or_path}: cannot load: {str(error).splitlines()[0]}" + _hub_hint(name_or_path)
        ) from None
    if fmt == "bin":
        print(
            f"loaded {name_or_path}: weights from pytorch_model.bin (torch weights_only loader; no safetensors "
            f"in the checkpoint)",
            file=sys.stderr,
        )
    elif fmt == "safetensors":
        print(f"loaded {name_or_path}: weights from safetensors", file=sys.stderr)
    return model


# ---------------------------------------------------------------- a run (or any checkpoint) for inference

ADAPTER_CONFIG = "adapter_config.json"  # a PEFT adapter directory holds this


@dataclass
class InferenceSource:
    """Where the weights and the tokenizer of a model to generate with come from."""

    config: Config
    model_dir: Path | str  # full model weights, or the adapter directory
    adapter: bool  # model_dir holds a PEFT adapter on config.model.name_or_path
    run_dir: Path | None = None


def checkpoint_kind(model_path: str | Path, config: Config | None = None, what: str = "--model") -> str:
    """'seq2seq' when the checkpoint's config.json says is_encoder_decoder, else 'causal'."""
    from transformers import AutoConfig

    trust = config.model.trust_remote_code if config else False
    path = resolve_model_path(model_path, what)
    try:
        model_config = AutoConfig.from_pretrained(path, trust_remote_code=trust)
    except (OSError, ValueError) as error:
        raise ConfigError(f"{model_path}: cannot read the model's config.json: {str(error).splitlines()[0]}") from None
    return "seq2seq" if getattr(model_config, "is_encoder_decoder", False) else "causal"


def check_model_kind(config: Config) -> None:
    """`model.kind` must be what the checkpoint is: a causal checkpoint read as seq2seq (or the reverse) fails
    deep inside transformers, or worse, loads with fresh random heads."""
    actual = checkpoint_kind(config.model.name_or_path, config)
    if actual != config.model.kind:
        what = "an encoder-decoder" if actual == "seq2seq" else "a decoder-only"
        raise ConfigError(
            f"model.kind={config.model.kind}: {config.model.name_or_path} is {what} ({actual}) checkpoint; "
            f"set model.kind: {actual}"
        )


def check_lora_targets(model, config: Config) -> None:
    """Each `lora.target_modules` entry must name modules of this model (PEFT's rule: the full name, or its last
    parts after a dot); one that matches nothing is a typo, or a recipe for another architecture."""
    targets = config.lora.target_modules
    if not config.lora.enabled or targets == "all-linear":
        return
    names = [name for name, _ in model.named_modules()]
    missing = [t for t in targets if not any(n == t or n.endswith("." + t) for n in names)]
    if missing:
        import torch.nn as nn

        linear = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, nn.Linear)})
        raise ConfigError(
            f"lora.target_modules: {', '.join(missing)} match no module of {config.model.name_or_path} "
            f"(its linear layers: {', '.join(linear)}; or use 'all-linear')"
        )


def resolve_inference_source(
    model_path: str | Path, config: Config | None = None, overrides: list[str] | None = None, what: str = "--model"
) -> InferenceSource:
    """A run directory (config.yaml + model/), a run's model/ directory, or any HF model path / hub id.

    For a run, the config is the run's config.yaml; a `config` given as well supplies everything but the
    `model` and `prompt` sections, which stay the run's (the prompt must be the one trained on). For
    anything else, `config` (default: the defaults) with `model.name_or_path` set to the path and
    `model.kind` read from the checkpoint (`is_encoder_decoder`). `overrides` (`key=value`) apply on top.
    """
    path = Path(model_path)
    run_dir: Path | None = None
    if (path / EXPORT_CONFIG_FILE).is_file():  # a `dialsum export` folder: its config, its weights
        return _export_source(path, config, overrides)
    if (path / CONFIG_FILE).is_file():
        run_dir = path
        model_dir: Path | str = path / MODEL_DIR
        if not model_dir.is_dir():
            raise RunDirError(
                f"{path}: run directory has no {MODEL_DIR}/ (training did not finish); "
                f"generate from a checkpoint with --config {path / CONFIG_FILE} and the checkpoint path"
            )
    elif path.name == MODEL_DIR and (path.parent / CONFIG_FILE).is_file():
        run_dir, model_dir = path.parent, path
    else:  # a folder, or a name found by the lookup ($DIALSUM_MODEL_DIRS, the HF cache, the hub)
        model_dir = resolve_model_path(model_path, what, weights=True)
    if run_dir is not None:
        run_config = load_config(run_dir / CONFIG_FILE)
        if config is None:
            config = run_config
        else:
            raw = config.to_dict()
            raw["model"], raw["prompt"] = run_config.to_dict()["model"], run_config.to_dict()["prompt"]
            config = config_from_dict(raw, source=str(run_dir / CONFIG_FILE))
    adapter = (Path(model_dir) / ADAPTER_CONFIG).is_file()  # on the base model config.model.name_or_path
    if run_dir is None:
        raw = config.to_dict() if config is not None else {"model": {}}
        if not adapter:  # a bare checkpoint: it names itself, and its config.json says its kind
            kind = checkpoint_kind(model_dir, config, what)
            if config is not None and config.model.kind != kind:
                print(
                    f"{model_path}: the checkpoint is {kind} (config.json), not model.kind={config.model.kind}; "
                    f"using {kind}",
                    file=sys.stderr,
                )
            raw["model"] = {**raw.get("model", {}), "name_or_path": str(model_dir), "kind": kind}
        elif config is None:
            raise ConfigError(
                f"{model_path}: a LoRA adapter outside a run directory needs --config naming its base model"
            )
        config = config_from_dict(raw, source=str(model_path))
    if overrides:
        config = config_from_dict(config.to_dict(), overrides, source="--set")
    return InferenceSource(
        config=config, model_dir=Path(model_dir) if adapter else model_dir, adapter=adapter, run_dir=run_dir
    )


def _export_source(path: Path, config: Config | None, overrides: list[str] | None) -> InferenceSource:
    """An export: the model and prompt sections are the export's own (the prompt trained on); merged weights name
    the folder itself, an adapter (--no-merge) its base."""
    exported = load_config(path / EXPORT_CONFIG_FILE)
    raw = (config or exported).to_dict()
    raw["model"], raw["prompt"] = exported.to_dict()["model"], exported.to_dict()["prompt"]
    raw["lora"] = exported.to_dict()["lora"]
    adapter = (path / ADAPTER_CONFIG).is_file()
    if not adapter:
        raw["model"]["name_or_path"] = str(path)
    config = config_from_dict(raw, overrides, source=str(path / EXPORT_CONFIG_FILE))
    return InferenceSource(config=config, model_dir=path if adapter else str(path), adapter=adapter, run_dir=None)


def load_source(source: InferenceSource):
    config = source.config
    tokenizer = load_tokenizer(source.model_dir, config)
    if source.adapter:
        from peft import PeftModel

        base = load_model(config.model.name_or_path, config)
        if len(tokenizer) > base.get_input_embeddings().num_embeddings:  # training added a pad token
            base.resize_token_embeddings(len(tokenizer))
        model = PeftModel.from_pretrained(base, str(source.model_dir)).merge_and_unload()
    else:
        model = load_model(source.model_dir, config)
    if config.model.kind == "causal":
        tokenizer.padding_side = "left"
    if has_cuda():
        model.to("cuda")
    model.eval()
    return model, tokenizer


def load_for_inference(model_path: str | Path, config: Config | None = None):
    """(model, tokenizer, config) ready to generate: adapter merged, eval mode, left padding for causal."""
    source = resolve_inference_source(model_path, config)
    model, tokenizer = load_source(source)
    return model, tokenizer, source.config
