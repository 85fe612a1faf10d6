"""Load tokenizers and models the safe way: safetensors only, remote code off unless the config turns it on."""

from __future__ import annotations

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
    """bf16 where the GPU supports it, fp32 on the CPU (CPU bf16 matmuls are slow and lossy)."""
    if config.model.dtype != "auto":
        return getattr(torch, config.model.dtype)
    return torch.bfloat16 if use_bf16(config) else torch.float32


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

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16,
    )


def load_model(name_or_path: str | Path, config: Config, for_training: bool = False):
    """AutoModelForCausalLM or AutoModelForSeq2SeqLM per `model.kind`, weights from safetensors only."""
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    auto_class = AutoModelForCausalLM if config.model.kind == "causal" else AutoModelForSeq2SeqLM
    kwargs = dict(
        dtype=torch_dtype(config),
        trust_remote_code=config.model.trust_remote_code,
        revision=config.model.revision,
        use_safetensors=True,
        attn_implementation=config.model.attn_implementation if config.model.kind == "causal" else None,
    )
    if for_training:
        kwargs["quantization_config"] = quantization_config(config)
    if config.model.attn_implementation == "flash_attention_2" and not has_cuda():
        raise ConfigError("model.attn_implementation=flash_attention_2 needs a CUDA GPU; use sdpa on the CPU")
    try:
        model = auto_class.from_pretrained(resolve_model_path(name_or_path), **{k: v for k, v in kwargs.items() if v is not None})
    except OSError as error:
        raise ConfigError(f"model.name_or_path={name_or_path}: cannot load: {str(error).splitlines()[0]}") from None
    return model
