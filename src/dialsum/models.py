"""Load tokenizers and models the safe way: safetensors only, remote code off unless the config turns it on."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from dialsum.config import Config
from dialsum.errors import ConfigError


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


def resolve_model_path(name_or_path: str | Path) -> str:
    """`tiny:llama` (qwen2, qwen3, bart) names a tiny offline model built on first use (demos, tests)."""
    name = str(name_or_path)
    if name.startswith(TINY_PREFIX):
        from dialsum.tiny import tiny_model_cached

        arch = name[len(TINY_PREFIX):]
        if arch not in ("llama", "qwen2", "qwen3", "bart"):
            raise ConfigError(f"model.name_or_path={name}: tiny models are tiny:llama, tiny:qwen2, tiny:qwen3, tiny:bart")
        return str(tiny_model_cached(arch))
    return name


def load_tokenizer(name_or_path: str | Path, config: Config):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(
            resolve_model_path(name_or_path), trust_remote_code=config.model.trust_remote_code, revision=config.model.revision
        )
    except OSError as error:  # a missing directory, an unreachable hub, a repo id that does not exist
        raise ConfigError(f"model.name_or_path={name_or_path}: cannot load the tokenizer: {str(error).splitlines()[0]}") from None


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
    path = resolve_model_path(name_or_path)
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
        raise ConfigError(f"model.name_or_path={name_or_path}: pytorch_model.bin refused by torch's weights_only "
                          f"loader ({what}; a checkpoint must hold tensors only); nothing was executed") from None
    except OSError as error:
        raise ConfigError(f"model.name_or_path={name_or_path}: cannot load: {str(error).splitlines()[0]}") from None
    if fmt == "bin":
        print(f"loaded {name_or_path}: weights from pytorch_model.bin (torch weights_only loader; no safetensors "
              f"in the checkpoint)", file=sys.stderr)
    elif fmt == "safetensors":
        print(f"loaded {name_or_path}: weights from safetensors", file=sys.stderr)
    return model
