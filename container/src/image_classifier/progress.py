"""Progress of a long wait the user started: a bar on a terminal, a ``key=value`` line now and then in a log.

pip, ``aws s3 cp`` and ``docker pull`` show size, rate and time left on a terminal and stay quiet in
logs; so does this. On a terminal (stderr is a tty) it is a ``tqdm`` bar; otherwise one line every
``interval_s`` seconds and one at the end::

    event=progress what=download done=52428800 total=1132023808 unit=B percent=4.6 rate=10485760 eta_s=103
    event=progress_done what=download done=1132023808 unit=B seconds=108.0 rate=10481702

``IMAGE_CLASSIFIER_PROGRESS=bar|lines|off`` overrides the choice. Thread-safe: the upload's threads
report into one.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from types import TracebackType
from typing import Any

from image_classifier.metrics import format_line

log = logging.getLogger(__name__)

INTERVAL_SECONDS = 10.0


def _mode() -> str:
    chosen = os.environ.get("IMAGE_CLASSIFIER_PROGRESS", "")
    if chosen in ("bar", "lines", "off"):
        return chosen
    return "bar" if sys.stderr.isatty() else "lines"


class Progress:
    """``with Progress("upload", total=bytes, unit="B") as progress: ... progress.update(n)``."""

    def __init__(self, what: str, total: float | None = None, unit: str = "", *, interval_s: float | None = None, **fields: Any):
        self.what, self.total, self.unit, self.fields = what, total, unit, fields
        self.interval_s = INTERVAL_SECONDS if interval_s is None else interval_s
        self.done = 0.0
        self._offset = 0.0
        self.items = 0
        self._lock = threading.Lock()
        self._started = self._said = time.monotonic()
        self._mode = _mode()
        self._bar: Any = None
        if self._mode == "bar":
            from tqdm import tqdm

            scale = {"unit": "B", "unit_scale": True, "unit_divisor": 1024} if unit == "B" else {"unit": f" {unit}" if unit else "it"}
            self._bar = tqdm(total=total, desc=what, leave=False, **scale)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None, traceback: TracebackType | None) -> None:
        self.close(failed=kind is not None)

    def start_at(self, done: float) -> None:
        """A resumed wait: ``done`` was there before (not counted in the rate)."""
        with self._lock:
            self.done = done
            self._offset = done
        if self._bar is not None:
            self._bar.update(done)

    def update(self, amount: float, items: int = 1) -> None:
        with self._lock:
            self.done += amount
            self.items += items
            now = time.monotonic()
            due = self._mode == "lines" and now - self._said >= self.interval_s
            if due:
                self._said = now
        if self._bar is not None:
            self._bar.update(amount)
        elif due:
            log.info(format_line("progress", what=self.what, **self._figures(now), **self.fields))

    def _figures(self, now: float) -> dict[str, Any]:
        seconds = max(now - self._started, 1e-9)
        rate = (self.done - self._offset) / seconds
        figures: dict[str, Any] = {"done": round(self.done), "total": round(self.total) if self.total else None, "unit": self.unit or None}
        if self.total:
            figures["percent"] = round(100 * self.done / self.total, 1)
        figures["rate"] = round(rate)
        if self.items and self.unit:  # bytes and the objects they came in
            figures["items"] = self.items
        if self.total and rate > 0:
            figures["eta_s"] = round((self.total - self.done) / rate)
        return {k: v for k, v in figures.items() if v is not None}

    def close(self, failed: bool = False) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        if self._mode == "off":
            return
        now = time.monotonic()
        figures = self._figures(now)
        figures.pop("eta_s", None)
        figures.pop("percent", None)
        event = "progress_failed" if failed else "progress_done"
        log.info(format_line(event, what=self.what, seconds=round(now - self._started, 1), **figures, **self.fields))
