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

A named SageMaker job checkpoints in a folder of its own (``environment.checkpoint_dir``) and
empties it when it succeeds (``RunCheckpoints.finish``): nothing resumes a finished job, and
SageMaker mirrors a deletion in the container to the checkpoint S3 prefix, which every later job
given that prefix (every later trial of a tuning job) downloads when it starts.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import torch

from image_classifier import params
from image_classifier.atomic import atomic_target
from image_classifier.errors import UserError
from image_classifier.metrics import format_line
from image_classifier.model_card import save_weights
from image_classifier.modeling.weights_io import read_state_dict
from image_classifier.training.background_writes import BackgroundWriter, snapshot
from image_classifier.training.progress import Progress, Stateful

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


def read_best(directory: Path, epoch: int, run_id: str) -> dict[str, torch.Tensor] | None:
    """The best-model file's weights if they are of ``epoch`` of run ``run_id``.

    Not one a failed write left stale, nor another run's (the file's metadata names both)."""
    from safetensors import safe_open

    path = directory / params.BEST_WEIGHTS_FILE
    if not path.exists():
        return None
    try:
        with safe_open(str(path), "pt") as handle:
            meta = handle.metadata() or {}
        state = read_state_dict(path)
    except (UserError, OSError, RuntimeError):
        return None
    return state if meta.get("epoch") == str(epoch) and meta.get("run") == run_id else None


@dataclass
class RunCheckpoints:
    """This run's checkpoint folder, as the epoch loop uses it: resume, then write as epochs end.

    Every process resumes; only the main one writes. Epoch writes go through the background
    ``writer``; a signal's checkpoint waits for those first, so the newest state lands last.
    """

    directory: Path
    classes: list[str]
    hyperparameters: dict[str, Any]  # hp.model_dump(), dumped once per job
    writer: BackgroundWriter
    is_main: bool
    remove_when_done: bool = False  # a named job's own folder: emptied once the job has succeeded

    @property
    def run_id(self) -> str:
        return run_fingerprint(self.classes, self.hyperparameters)

    def resume(self, parts: Stateful, *, bad_images: int) -> Progress:
        """The newest checkpoint of this run loaded into ``parts``, or a fresh start."""
        found = load_latest(self.directory, lambda state: foreign_reason(state, self.classes, self.hyperparameters), self.is_main)
        if found is None:
            return Progress(bad_images=bad_images)
        state, path = found
        progress = Progress.restore(state, parts, bad_images=bad_images)
        progress.best_state = read_best(self.directory, int(progress.best["epoch"]), self.run_id)
        log.info(format_line("resumed", checkpoint=path.name, epoch=progress.epoch, step=progress.step))
        return progress

    def _state(self, progress: Progress, parts: Stateful, epoch: int, step: int) -> dict:
        return progress.checkpoint(parts, epoch=epoch, step=step, classes=self.classes, hyperparameters=self.hyperparameters)

    def save_epoch(self, progress: Progress, parts: Stateful, improved: bool) -> None:
        """After an epoch: the best weights (if it improved), then the checkpoint, in the background."""
        if not self.is_main:
            return
        label = f"epoch_{progress.epoch}"
        if improved and progress.best_state is not None:
            meta = {**{k: str(v) for k, v in progress.best.items()}, "run": self.run_id}
            path = self.directory / params.BEST_WEIGHTS_FILE
            self.writer.submit(
                "best", label, partial(write_or_warn, params.BEST_WEIGHTS_FILE, save_weights, progress.best_state, path, meta)
            )
        state = snapshot(self._state(progress, parts, progress.epoch, 0))
        self.writer.submit("checkpoint", label, partial(self._write, state, "epoch"))

    def save_now(self, progress: Progress, parts: Stateful, epoch: int, step: int) -> None:
        """A signal arrived mid-epoch: the queued writes, then this position, before the job ends."""
        self.writer.flush()
        if self.is_main:
            self._write(self._state(progress, parts, epoch, step), "signal")

    def _write(self, state: dict, reason: str) -> None:
        epoch, step = state["epoch"], state["step"]
        if saved := write_or_warn("checkpoint", save_checkpoint, state, self.directory, epoch, step):
            log.info(format_line("checkpoint", path=saved.name, reason=reason, epoch=epoch, step=step))

    def finish(self) -> None:
        """The job succeeded: a named job's folder goes (a finished job is never resumed, and S3 follows)."""
        if not (self.is_main and self.remove_when_done and self.directory.is_dir()):
            return
        files = [p for p in self.directory.rglob("*") if p.is_file()]
        size = sum(p.stat().st_size for p in files)
        shutil.rmtree(self.directory, ignore_errors=True)
        log.info(format_line("checkpoints_removed", folder=self.directory.name, files=len(files), bytes=size, reason="job_succeeded"))
