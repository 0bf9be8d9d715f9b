"""What the container does, in numbers: CloudWatch EMF lines on stdout, the same numbers as Prometheus text on ``/metrics``.

Per request: its latency, stage by stage (the ``Server-Timing`` breakdown of serving/timing.py, reused,
never measured again), the batch it ran in (images in the forward pass), its payload bytes, and its
status (errors counted by status). Per model: the load time. ``IMAGE_CLASSIFIER_METRICS=off`` turns
all of it off; ``IMAGE_CLASSIFIER_METRICS_SAMPLE=0.1`` records the latencies and sizes of one request
in ten (requests and errors are always all counted).

Why the front alone, and not prometheus-client's multi-process mode: every request passes through the
front (one process), and each answer brings the worker's stage timings and batch size back with it, so
the front sees every number without a second channel. The one number born in a worker, the model's
load time, the front measures as it sees it: registration with multi-model-server returns once the
workers have loaded and warmed up the model (the cold start a caller waits for). Multi-process mode
would add a folder of memory-mapped files per worker process, files to clean when MMS restarts a
worker, and a lock on each write, for numbers the front already has.

Cost on the hot path: a few histogram observations (a lock and a bisect each) and list appends; the
EMF lines are serialised and written by a background task, off the request, every
``EMF_FLUSH_SECONDS`` or sooner when a metric holds ``EMF_MAX_VALUES`` values.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import time
from collections.abc import Mapping

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from image_classifier import params
from image_classifier.serving.config import ServingConfig
from image_classifier.serving.emf import STAGE_METRICS, EmfBuffer

log = logging.getLogger(__name__)
CONTENT_TYPE = CONTENT_TYPE_LATEST
OTHER_MODEL = "other"  # the label of requests for a model that is not loaded (unbounded names never become series)
_SECONDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 3600.0)
_IMAGES = (1, 2, 4, 8, 16, 32, 64)
_LABELS = {params.ENDPOINT_DIMENSION: "endpoint", params.MODEL_VERSION_DIMENSION: "model_version"}
_BYTES = tuple(float(4**k * 1024) for k in range(11))  # 1 KiB .. 1 GiB


class Metrics:
    def __init__(self, config: ServingConfig, write=None):
        self.sample = config.metrics_sample
        self.registry = CollectorRegistry(auto_describe=False)
        # the deploy pipeline's endpoint and model version (ServingConfig.metrics_scope): two more labels on every series
        scope_labels = [_LABELS[name] for name, _ in config.metrics_scope]
        self._scope = tuple(value for _, value in config.metrics_scope)
        self.requests = Counter(
            "image_classifier_requests",
            "Inference requests answered, by model and HTTP status",
            ["model", "status", *scope_labels],
            registry=self.registry,
        )
        self.stage_seconds = Histogram(
            "image_classifier_request_stage_seconds",
            "Where a request's time went (the Server-Timing stages: total, front, queue, hop, worker, decode, preprocess, forward, explain, encode)",
            ["model", "stage", *scope_labels],
            buckets=_SECONDS,
            registry=self.registry,
        )
        self.batch_images = Histogram(
            "image_classifier_batch_images",
            "Images in the forward pass a request ran in",
            ["model", *scope_labels],
            buckets=_IMAGES,
            registry=self.registry,
        )
        self.payload_bytes = Histogram(
            "image_classifier_request_bytes", "Request body sizes", ["model", *scope_labels], buckets=_BYTES, registry=self.registry
        )
        self.load_seconds = Gauge(
            "image_classifier_model_load_seconds",
            "Seconds from registration to a loaded, warmed-up model",
            ["model", *scope_labels],
            registry=self.registry,
        )
        self.emf = EmfBuffer(config.metrics_namespace, scope=dict(config.metrics_scope))
        self._write = write or _write_stdout
        self._random = random.Random()
        self._due = asyncio.Event()
        self._task: asyncio.Task | None = None

    # --- the hot path: a few dict updates ---------------------------------------------------------
    def observe(self, model: str, status: int, stages: Mapping[str, float] | None, payload_bytes: int | None) -> None:
        """One answered request; ``stages``: its Server-Timing stages (ms) and ``images``, for a 200."""
        self.requests.labels(model, str(status), *self._scope).inc()
        sampled = self.sample >= 1.0 or self._random.random() < self.sample
        values: dict[str, float] = {}
        if sampled:
            for stage, ms in (stages or {}).items():
                name = STAGE_METRICS.get(stage)
                if name is not None:
                    self.stage_seconds.labels(model, stage, *self._scope).observe(ms / 1000)
                    values[name] = ms
            if stages and "images" in stages:
                self.batch_images.labels(model, *self._scope).observe(stages["images"])
                values["BatchSize"] = stages["images"]
            if payload_bytes is not None:
                self.payload_bytes.labels(model, *self._scope).observe(payload_bytes)
                values["PayloadBytes"] = float(payload_bytes)
        if self.emf.add(model, status, values):
            self._due.set()

    def model_loaded(self, model: str, seconds: float) -> None:
        self.load_seconds.labels(model, *self._scope).set(seconds)
        self.emf.model_loaded(model, seconds)
        self._due.set()

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

    # --- EMF lines, off the request path ---------------------------------------------------------------
    async def run(self, interval: float = params.EMF_FLUSH_SECONDS) -> None:
        """Until cancelled: drain every ``interval`` seconds, or as soon as a metric is full."""
        while True:
            try:
                await asyncio.wait_for(self._due.wait(), timeout=interval)
            except TimeoutError:
                pass
            self._due.clear()
            lines = self.emf.drain(int(time.time() * 1000))
            if lines:
                await asyncio.to_thread(self._write, lines)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self.run())

    async def stop(self) -> None:
        """The last lines (shutdown), written before the process exits."""
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        lines = self.emf.drain(int(time.time() * 1000))
        if lines:
            self._write(lines)


def _write_stdout(lines: list[str]) -> None:
    """One write of whole lines to fd 1 (where CloudWatch Logs reads): the workers' log lines share the pipe,
    and a single write of a few kB is not split by another writer's."""
    data = ("\n".join(lines) + "\n").encode()
    try:
        while data:
            written = os.write(1, data)
            data = data[written:]
    except OSError as exc:  # metrics must never take the server down
        log.warning("event=metrics_write_failed error=%s", type(exc).__name__)
