"""Per-epoch checkpoint writes off the training loop, newest state first.

Writing a checkpoint (torch.save + fsync) and the best-model file (safetensors + fsync + sha256)
takes about a second for a ResNet-50 on a small disk: nothing next to a full epoch, but ten times
an epoch of a head trained on cached features. So the epoch loop hands the writes to one
background thread and goes on. Each write is still atomic; the state is snapshotted (copied to
the CPU) when handed over, so later steps cannot tear it.

When epochs finish faster than the disk, a queued write is replaced by the newer one of its kind
(``event=checkpoint_superseded``): the newest state is what a resumed job needs. Within one hand-
over the best-model file is written before the checkpoint, so a checkpoint on disk never names a
best epoch whose weights were not written first. ``flush`` waits for everything (the end of the
job, before a signal's checkpoint). A write that raises something other than the I/O errors the
writes report themselves is raised again by ``flush``: a bug must not be swallowed by a thread.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

import torch

from image_classifier.metrics import format_line

log = logging.getLogger(__name__)
ORDER = ("best", "checkpoint")  # the order writes of one hand-over run in


def snapshot(value: Any) -> Any:
    """A copy on the CPU of every tensor in a nested state (dicts, lists, tuples), the rest as is."""
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", copy=True)
    if isinstance(value, dict):
        return {k: snapshot(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(snapshot(v) for v in value)
    return value


class BackgroundWriter:
    def __init__(self) -> None:
        self._pending: dict[str, tuple[str, Callable[[], object]]] = {}
        self._busy = False
        self._done = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._error: BaseException | None = None

    def submit(self, kind: str, label: str, write: Callable[[], object]) -> None:
        """Run ``write`` soon; a not-yet-started write of the same ``kind`` is dropped for it."""
        with self._done:
            if kind in self._pending:
                log.info(format_line("checkpoint_superseded", what=kind, by=label, dropped=self._pending[kind][0]))
            self._pending[kind] = (label, write)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="checkpoint-writer", daemon=True)
                self._thread.start()
            self._done.notify_all()

    def flush(self) -> None:
        with self._done:
            self._done.wait_for(lambda: not self._pending and not self._busy)
            error, self._error = self._error, None
        if error is not None:
            raise error

    def close(self) -> None:
        try:
            self.flush()
        finally:
            with self._done:
                self._closed = True
                self._done.notify_all()
            if self._thread is not None:
                self._thread.join(timeout=60)

    def __enter__(self) -> BackgroundWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
            return
        try:  # the job is failing or stopping already: finish the writes, report nothing new
            self.close()
        except Exception:  # noqa: BLE001
            log.warning("event=checkpoint_failed what=background reason=%s", exc_type.__name__)

    def _run(self) -> None:
        while True:
            with self._done:
                self._done.wait_for(lambda: self._pending or self._closed)
                if not self._pending:
                    return
                batch = [self._pending.pop(kind) for kind in ORDER if kind in self._pending]
                batch += [self._pending.pop(kind) for kind in list(self._pending)]
                self._busy = True
            for _, write in batch:
                try:
                    write()  # each write logs (or warns about) its own I/O errors
                except Exception as exc:  # noqa: BLE001 - kept for flush() to raise in the training thread
                    with self._done:
                        self._error = self._error or exc
            with self._done:
                self._busy = False
                self._done.notify_all()
