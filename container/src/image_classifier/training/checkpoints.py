"""Spot-safe checkpoints: one dict, written atomically, the last two kept, resumed automatically.

A checkpoint is torchvision's single dict ``{model, optimizer, lr_scheduler, epoch, ...}`` plus
the position inside the epoch (``step``), so a job stopped mid-epoch resumes on exactly the
batches it had not seen. Writes go to a temporary file, are fsynced, then renamed: a crash
mid-write (or a full disk) leaves the previous checkpoint intact. Loading uses
``weights_only=True`` (no pickle); a newest checkpoint that does not load is skipped with a warning.

A checkpoint from another run in the same folder (tuning trials given one checkpoint URI, a job
restarted with a new learning rate) is not resumed: ``foreign_reason`` compares the classes, the
model and every hyperparameter that shapes the trajectory.

A write that fails (disk full, read-only folder) does not stop training: ``write_or_warn`` logs
``event=checkpoint_failed`` and the job goes on; a restart resumes from the previous checkpoint.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import re
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import torch

from image_classifier import params
from image_classifier.atomic import atomic_target

log = logging.getLogger(__name__)
T = TypeVar("T")
_NAME = re.compile(r"^checkpoint-(\d+)-(\d+)\.pt$")
# What a restart may change and still continue the same run: how long, and how it is run (speed,
# logging, checks), not what is learnt. Any other hyperparameter, a new one too, must match.
RESUMABLE_CHANGES = frozenset(
    {
        "epochs",
        "early_stopping_patience",
        "num_workers",
        "max_bad_fraction",
        "cache_images",
        "feature_cache",
        "amp",
        "channels_last",
        "compile",
        "processes_per_host",
        "deterministic",
        "log_interval",
        "checks",
        "profile",
        "profile_start_step",
        "profile_steps",
    }
)


def run_fingerprint(classes: list[str], hyperparameters: dict) -> str:
    """Short hash of what defines a run (classes + the hyperparameters a restart may not change)."""
    defining = {k: v for k, v in hyperparameters.items() if k not in RESUMABLE_CHANGES}
    text = json.dumps({"classes": classes, "hyperparameters": defining}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def foreign_reason(state: dict, classes: list[str], hyperparameters: dict) -> str | None:
    """Why ``state`` belongs to another run (``different_...``), or None when this run resumes it."""
    if state.get("classes") != classes or state.get("model_name") != hyperparameters.get("model"):
        return "different_model_or_classes"
    stored = state.get("hyperparameters") or {}
    differ = sorted(k for k in stored.keys() & hyperparameters.keys() - RESUMABLE_CHANGES if stored[k] != hyperparameters[k])
    return f"different_hyperparameters:{','.join(differ)}" if differ else None


def checkpoint_path(directory: Path, epoch: int, step: int) -> Path:
    return directory / params.CHECKPOINT_PATTERN.format(epoch=epoch, step=step)


def list_checkpoints(directory: Path) -> list[Path]:
    """Newest first, ordered by (epoch, step) from the file name."""
    found = [(tuple(map(int, m.groups())), p) for p in directory.glob(params.CHECKPOINT_GLOB) if (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found, reverse=True)]


def save_checkpoint(state: dict, directory: Path, epoch: int, step: int, keep: int = params.CHECKPOINTS_KEPT) -> Path:
    target = checkpoint_path(directory, epoch, step)
    with atomic_target(target) as tmp, open(tmp, "wb") as handle:
        try:
            torch.save(state, handle)
        except RuntimeError as exc:  # torch wraps the OSError of a failed write (ENOSPC): raise that
            if isinstance(exc.__context__, OSError):
                raise exc.__context__ from None
            raise
    for old in list_checkpoints(directory)[keep:]:
        old.unlink(missing_ok=True)
    return target


def write_or_warn(what: str, write: Callable[..., T], *args) -> T | None:
    """``write(*args)``, one write into the checkpoint folder; on OSError log why and return None."""
    from safetensors import SafetensorError

    try:
        return write(*args)
    except (OSError, SafetensorError) as exc:  # safetensors reports I/O errors as "... (os error 28)"
        code = getattr(exc, "errno", None) or int((re.findall(r"os error (\d+)", str(exc)) or ["0"])[0])
        log.warning("event=checkpoint_failed what=%s reason=%s", what, errno.errorcode.get(code, type(exc).__name__))
        return None


def load_latest(
    directory: Path, foreign: Callable[[dict], str | None] = lambda state: None, set_aside: bool = True
) -> tuple[dict, Path] | None:
    """The newest checkpoint that loads and that ``foreign`` (which says why not) accepts.

    Another run's checkpoints are moved into ``foreign/`` (by the main process: ``set_aside``), so
    that pruning, which goes by the numbers in the names, never removes this run's newer writes.
    """
    for path in list_checkpoints(directory) if directory.is_dir() else []:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - any unreadable checkpoint is skipped, not fatal
            log.warning("event=checkpoint_skipped path=%s reason=%s", path.name, type(exc).__name__)
            continue
        if reason := foreign(state):
            log.warning("event=checkpoint_ignored path=%s reason=%s", path.name, reason)
            if set_aside:
                _set_aside(path)
            continue
        return state, path
    return None


def _set_aside(path: Path) -> None:
    try:
        (path.parent / params.FOREIGN_CHECKPOINTS_DIR).mkdir(exist_ok=True)
        path.replace(path.parent / params.FOREIGN_CHECKPOINTS_DIR / path.name)
    except OSError as exc:
        log.warning("event=checkpoint_set_aside_failed path=%s reason=%s", path.name, type(exc).__name__)
