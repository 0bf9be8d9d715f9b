"""Logging set-up: one line per event, rank-tagged under DDP, no progress bars off a terminal."""

from __future__ import annotations

import logging
import os
import sys


class _RankFilter(logging.Filter):
    def __init__(self) -> None:
        super().__init__()
        self.rank = os.environ.get("RANK")

    def filter(self, record: logging.LogRecord) -> bool:
        record.rank = f" rank={self.rank}" if self.rank is not None else ""
        return True


def setup_logging(level: str | None = None) -> None:
    handler = logging.StreamHandler(sys.stdout)
    handler.addFilter(_RankFilter())
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s%(rank)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level or os.environ.get("LOG_LEVEL", "INFO"))
    for noisy in ("PIL", "matplotlib", "urllib3", "smdebug"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
