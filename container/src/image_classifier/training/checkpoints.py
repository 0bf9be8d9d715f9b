"""Spot-safe checkpoints: one dict, written atomically, the last two kept, resumed automatically.

A checkpoint is torchvision's single dict ``{model, optimizer, lr_scheduler, epoch, ...}`` plus
the position inside the epoch (``step``), so a job stopped mid-epoch resumes on exactly the
batches it had not seen. Writes go to a temporary file, are fsynced, then renamed: a crash
mid-write (or a full disk) leaves the previous checkpoint intact. Loading uses
``weights_only=True`` (no pickle); a newest checkpoint that does not load is skipped with a warning.

A write that fails (disk full, read-only folder) does not stop training: ``write_or_warn`` logs
``event=checkpoint_failed`` and the job goes on; a restart resumes from the previous checkpoint.
"""

from __future__ import annotations

import errno
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


def load_latest(directory: Path) -> tuple[dict, Path] | None:
    for path in list_checkpoints(directory) if directory.is_dir() else []:
        try:
            return torch.load(path, map_location="cpu", weights_only=True), path
        except Exception as exc:  # noqa: BLE001 - any unreadable checkpoint is skipped, not fatal
            log.warning("event=checkpoint_skipped path=%s reason=%s", path.name, type(exc).__name__)
    return None
