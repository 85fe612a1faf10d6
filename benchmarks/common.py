"""What every benchmark shares: offline hub settings and where the real data lives.

Benchmarks run as scripts (`python benchmarks/NAME.py`), so this module is imported as `common`.
"""

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data" / "dialogsum-ko"  # the competition files, when present
SAMPLE = ROOT / "src" / "dialsum" / "sample_data"  # the bundled sample, always present


def real_dev_or_sample(sample_name: str = "train.csv") -> Path:
    """The real dev set (499 dialogues) when ../shared is beside the project, else a bundled sample file."""
    dev = SHARED / "dev.csv"
    return dev if dev.is_file() else SAMPLE / sample_name
