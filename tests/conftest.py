"""Shared fixtures: real data from ../shared when present, the bundled sample otherwise; tiny offline models."""

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


def shared_file(relative: str) -> Path:
    path = SHARED / relative
    if not path.is_file():
        pytest.skip(f"../shared/{relative} not present")
    return path


@pytest.fixture(scope="session")
def real_dev_path() -> Path:
    """The real DialogSum-Korean dev file when ../shared is beside the project, else the bundled sample."""
    path = SHARED / "data" / "dialogsum-ko" / "dev.csv"
    return path if path.is_file() else SAMPLE / "train.csv"


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
