"""SIGINT, SIGTERM and SIGHUP as exceptions, so that the teardown of a run happens on each of them.

Python already turns SIGINT (Ctrl-C) into ``KeyboardInterrupt``; SIGTERM (``kill``, ``timeout``,
CI runners, a stopped Studio kernel) and SIGHUP (a closed terminal) would end the process on
the spot and leave a real-time endpoint billing. While teardown runs, further signals are
noted and ignored: it is bounded (``teardown_wait_s``), and stopping it halfway is what leaves
things behind. SIGKILL cannot be caught: ``python -m deploy.pipeline cleanup`` is for that.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator
from types import FrameType

HANDLED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class Interrupted(KeyboardInterrupt):
    """The run was interrupted by a signal; ``exit_code`` follows the shell's 128 + signal number."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def _raise(signum: int, _frame: FrameType | None) -> None:
    raise Interrupted(signum)


@contextlib.contextmanager
def _handlers(handler: Callable[[int, FrameType | None], None]) -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
        yield
        return
    previous = {signum: signal.signal(signum, handler) for signum in HANDLED}
    try:
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)


def raising() -> contextlib.AbstractContextManager[None]:
    """Inside: each handled signal raises ``Interrupted``."""
    return _handlers(_raise)


def deferred(say: Callable[[str], None]) -> contextlib.AbstractContextManager[None]:
    """Inside: each handled signal is noted and ignored."""

    def note(signum: int, _frame: FrameType | None) -> None:
        say(f"event=signal_ignored signal={signal.Signals(signum).name} reason=teardown_in_progress")

    return _handlers(note)
