"""Where one request's time goes, stage by stage, measured on the live request.

Every answer of ``POST /invocations`` carries a standard ``Server-Timing`` header (milliseconds):

    total      the front, from the request read to the answer ready
    front      the front's own share (checks, copies, the response)
    queue      waiting in the front for batch company (0 for a lone request)
    hop        front -> multi-model-server (Java) -> worker socket -> back, minus the worker's time
    worker     the worker's handling of the envelope, all of it
    decode     image bytes -> pixels (this request's images)
    preprocess pixels -> the model's input tensor (this request's images)
    forward    the model on the batch this request was in (shared with its companions: ``desc`` says
               how many images)
    explain    the explanation pass (``explain=``; shared by the explained requests of the batch), absent otherwise
    encode     probabilities -> the JSON answer

The worker measures its stages and hands them to the front (in the envelope's metadata, or the
``X-Ic-Worker-Timing`` header of a single request); the front adds its own and writes the header.
The benchmark reads it (``local/bench/serve_bench.py``), the container's metrics reuse it.
Costs: a few ``perf_counter`` calls per request.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import TypeVar

WORKER_HEADER = "X-Ic-Worker-Timing"
WORKER_STAGES = ("worker", "decode", "preprocess", "forward", "explain", "encode")
FRONT_STAGES = ("total", "front", "queue", "hop")
T = TypeVar("T")


def now_ms() -> float:
    return time.perf_counter() * 1000


@contextmanager
def stopwatch(into: dict[str, float], stage: str) -> Iterator[None]:
    """Add the time spent in the block to ``into[stage]`` (ms)."""
    started = now_ms()
    try:
        yield
    finally:
        into[stage] = into.get(stage, 0.0) + now_ms() - started


def timed(function: Callable[[T], object], into: dict[str, float], stage: str) -> Callable[[T], object]:
    """``function`` with its time added to ``into[stage]`` on every call."""

    def run(value: T) -> object:
        with stopwatch(into, stage):
            return function(value)

    return run


def worker_header(timing: Mapping[str, float]) -> str:
    return ",".join(f"{k}={v:.3f}" for k, v in timing.items())


def parse_worker_header(text: str | None) -> dict[str, float]:
    out = {}
    for part in (text or "").split(","):
        key, _, value = part.partition("=")
        try:
            out[key.strip()] = float(value)
        except ValueError:
            continue
    return out


def front_stages(total: float, queue: float, round_trip: float, worker: Mapping[str, float]) -> dict[str, float]:
    """The front's view of one request (ms): its own share, the batching wait, the hop, the worker's stages."""
    worker_ms = worker.get("worker", 0.0)
    stages = {
        "total": total,
        "front": max(0.0, total - queue - round_trip),
        "queue": queue,
        "hop": max(0.0, round_trip - worker_ms),
    }
    stages |= {k: worker[k] for k in WORKER_STAGES if k in worker}
    if "images" in worker:
        stages["images"] = worker["images"]
    return stages


def server_timing(stages: Mapping[str, float]) -> str:
    """The ``Server-Timing`` header value (RFC: ``name;dur=ms``); the forward's batch size as its ``desc``."""
    images = stages.get("images")
    parts = []
    for name, value in stages.items():
        if name == "images":
            continue
        desc = f';desc="batch of {int(images)} images"' if name == "forward" and images else ""
        parts.append(f"{name};dur={value:.3f}{desc}")
    return ", ".join(parts)


def parse_server_timing(header: str | None) -> dict[str, float]:
    """``{"decode": 1.2, ...}`` from a ``Server-Timing`` header (entries without ``dur`` are skipped)."""
    out = {}
    for part in (header or "").split(","):
        name, _, rest = part.strip().partition(";")
        match = re.search(r"dur=([\d.]+)", rest)
        if name and match:
            out[name] = float(match.group(1))
    return out
