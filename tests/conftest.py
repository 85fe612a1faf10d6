"""Shared fixtures: real data from ../shared (a failure under CI when absent, a skip with the reason elsewhere);
tiny offline models."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_DISABLED", "true")

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
SAMPLE = ROOT / "src" / "dialsum" / "sample_data"


def running_in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def shared_file(relative: str) -> Path:
    """A file under ../shared. Absent: a failure when `CI` is set (CI must test on the real files), elsewhere a
    skip whose reason `-ra` prints. Never a silent stand-in: a "real data" test that ran on the sample would lie."""
    path = SHARED / relative
    if not path.is_file():
        reason = f"../shared/{relative} not present (looked in {SHARED})"
        if running_in_ci():
            pytest.fail(f"{reason}; CI runs with ../shared beside the project", pytrace=False)
        pytest.skip(reason)
    return path


def real_dev_file() -> Path:
    """The real DialogSum-Korean dev file (499 rows) from ../shared; no fallback to the bundled sample."""
    return shared_file("data/dialogsum-ko/dev.csv")


@pytest.fixture(scope="session")
def real_dev_path() -> Path:
    return real_dev_file()


@pytest.fixture(scope="session")
def tiny_llama() -> Path:
    from dialsum.tiny import tiny_model_cached

    return tiny_model_cached("llama")


@pytest.fixture(scope="session")
def tiny_qwen2() -> Path:
    from dialsum.tiny import tiny_model_cached

    return tiny_model_cached("qwen2")


@pytest.fixture(scope="session")
def tiny_bart() -> Path:
    from dialsum.tiny import tiny_model_cached

    return tiny_model_cached("bart")


@pytest.fixture(scope="module")
def llama(tiny_llama):
    """The tiny Llama loaded for inference, with its tokenizer (test_generate, test_suppress)."""
    from dialsum.config import config_from_dict
    from dialsum.models import load_for_inference

    model, tokenizer, _ = load_for_inference(tiny_llama, config_from_dict({"model": {"name_or_path": str(tiny_llama)}}))
    return model, tokenizer


@pytest.fixture(scope="module")
def llama_tokenizer(tiny_llama):
    """The tiny Llama's tokenizer alone, for the tests that need no model (they stay out of `slow`)."""
    from dialsum.config import config_from_dict
    from dialsum.models import load_tokenizer

    return load_tokenizer(tiny_llama, config_from_dict({"model": {"name_or_path": str(tiny_llama)}}))


@pytest.fixture(scope="module")
def sample_dialogues():
    """The bundled sample's test dialogues (test_generate, test_predict, test_suppress)."""
    from dialsum.data import load_dialogues

    return load_dialogues(SAMPLE / "test.csv")


def tiny_run_config(lora: bool, dev: bool = True):
    """A tiny Llama run on the bundled sample that trains in seconds: export and serve tests start from it."""
    from dialsum.config import config_from_dict

    return config_from_dict(
        {
            "model": {"name_or_path": "tiny:llama", "license": "apache-2.0"},
            "data": {
                "train": str(SAMPLE / "train.csv"),
                "dev": str(SAMPLE / "dev.csv") if dev else None,
                "hub_datasets": ["example/dialogsum-ko"],
            },
            "training": {
                "max_steps": 3,
                "per_device_train_batch_size": 4,
                "gradient_accumulation_steps": 1,
                "learning_rate": 5e-2,
                "max_length": 384,
                "packing": False,
                "gradient_checkpointing": False,
                "warmup_ratio": 0.0,
                "eval_steps": 3,
                "save_steps": 3,
            },
            "lora": {"enabled": lora, "r": 4},
            "generation": {"max_new_tokens": 16, "batch_size": 8},
            "logging": {"steps": 1},
        }
    )


@pytest.fixture(scope="session")
def tiny_lora_run(tmp_path_factory) -> Path:
    """`dialsum run` of a LoRA adapter (dev predictions and dev_scores.json included, no test split)."""
    from dialsum.run import run

    return run(tiny_run_config(lora=True), output_dir=tmp_path_factory.mktemp("runs") / "tiny-lora")


@pytest.fixture(scope="session")
def tiny_full_run(tmp_path_factory) -> Path:
    """`dialsum train` with every weight trained (no dev: no evaluation, quicker)."""
    from dialsum.train import train

    return train(tiny_run_config(lora=False, dev=False), output_dir=tmp_path_factory.mktemp("runs") / "tiny-full")
