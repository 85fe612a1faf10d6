"""Resuming a run: which keys a resume may change, whether a checkpoint already reached the run's length, and the
safety check every pickled state passes before a resume changes anything."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from dialsum.config import Config, load_config
from dialsum.errors import ConfigError, RunDirError
from dialsum.rundir import (
    CONFIG_FILE,
    TRAINER_STATE_FILE,
)

# Config keys a resume may change: they do not alter the model, the data or the optimizer's state.
RESUME_SAFE_KEYS = (
    "training.num_train_epochs",
    "training.max_steps",
    "training.save_total_limit",
    "training.dataloader_num_workers",
    "training.per_device_eval_batch_size",
    "training.grad_norm_threshold",
    "logging.",
    "generation.",
    "data.test",
    "evaluation.tokenizer",
)


def resume_config(run_dir: Path, overrides: list[str]) -> Config:
    """The run's saved config with the --set overrides that are safe on resume; any other key is an error."""
    for override in overrides:
        key = override.partition("=")[0].strip()
        if not any(key == safe or (safe.endswith(".") and key.startswith(safe)) for safe in RESUME_SAFE_KEYS):
            raise ConfigError(
                f"--set {key}: cannot change on --resume (the run continues with its saved value); keys that can: "
                + ", ".join(k + "*" if k.endswith(".") else k for k in RESUME_SAFE_KEYS)
            )
    return load_config(run_dir / CONFIG_FILE, overrides)


def training_finished(checkpoint: str, config: Config, overrides: list[str]) -> int | None:
    """The step the run finished at, when `checkpoint` already reached the run's length (resuming it would train
    one step more: transformers does); None when training has steps left."""
    state = json.loads((Path(checkpoint) / TRAINER_STATE_FILE).read_text(encoding="utf-8"))
    step, planned = state.get("global_step", 0), state.get("max_steps", 0)
    t = config.training
    length_changed = any(
        o.partition("=")[0].strip() in ("training.max_steps", "training.num_train_epochs") for o in overrides
    )
    if (t.max_steps > 0 and step >= t.max_steps) or (not length_changed and planned and step >= planned):
        return step
    return None


def check_checkpoint_safe(checkpoint: str | Path) -> None:
    """Every pickled state a resume will load (optimizer, scheduler, RNG, scaler) must load with weights_only=True,
    checked before anything in the run directory changes: a file holding code is refused here, not mid-resume.
    mmap keeps this cheap (the tensors are not read)."""
    import pickle

    from transformers.trainer_pt_utils import safe_globals  # the numpy RNG types the Trainer itself allows

    for path in sorted(Path(checkpoint).glob("*.pt")) + sorted(Path(checkpoint).glob("*.pth")):
        try:
            with safe_globals():
                torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError) as error:
            first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise RunDirError(
                f"{path}: refused to load (it does not load with weights_only=True, so it may hold code: {first}); "
                "nothing was changed: remove this checkpoint or resume from an older one"
            ) from None
