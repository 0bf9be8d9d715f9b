"""The serving configuration, read once from the environment SageMaker sets."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from image_classifier import params
from image_classifier.errors import UserError

# Measured with local/bench/serve_bench.py on 2 cores (README: Performance): batching concurrent
# requests cuts ResNet-50's cost per image by ~20 % (1 -> 4 images) and a lone request is never
# held back (see batching.Batcher), so the front batches by default.
DEFAULT_BATCH_SIZE = 16
DEFAULT_MAX_BATCH_DELAY_MS = 5


def _int(env: Mapping[str, str], name: str, default: int, minimum: int = 1) -> int:
    raw = env.get(name, "")
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise UserError(f"{name}={raw!r} is not an integer") from None
    if value < minimum:
        raise UserError(f"{name}={value} must be at least {minimum}")
    return value


@dataclass(frozen=True)
class ServingConfig:
    port: int
    workers: int
    timeout_seconds: int
    max_payload_mb: int
    multi_model: bool
    base_dir: Path
    batch_size: int
    max_batch_delay_ms: int
    threads_per_worker: int
    mms_port: int
    batches_in_flight: int = 0  # envelopes a model may have at MMS at once; 0: no limit
    explain: str | None = None  # IMAGE_CLASSIFIER_EXPLAIN: the method every request gets unless it says explain=off
    prefork: bool = True  # IMAGE_CLASSIFIER_PREFORK: workers forked from one interpreter with torch imported
    metrics: bool = True  # IMAGE_CLASSIFIER_METRICS: EMF lines and /metrics
    metrics_sample: float = 1.0  # IMAGE_CLASSIFIER_METRICS_SAMPLE
    metrics_namespace: str = params.DEFAULT_METRICS_NAMESPACE
    # IMAGE_CLASSIFIER_ENDPOINT / IMAGE_CLASSIFIER_MODEL_VERSION (set by the deploy pipeline): the dimensions
    # Endpoint and ModelVersion of every EMF line, the labels endpoint and model_version on /metrics
    metrics_scope: tuple[tuple[str, str], ...] = ()

    @property
    def model_dir(self) -> Path:
        return self.base_dir / params.MODEL_DIR

    @property
    def max_payload_bytes(self) -> int:
        return self.max_payload_mb * 1024 * 1024

    @property
    def batch_part_bytes(self) -> int:
        """Requests up to this size may share an envelope; larger ones go to a worker alone."""
        return min(self.max_payload_bytes, params.REALTIME_MAX_PAYLOAD_MB * 1024 * 1024)

    @property
    def max_request_bytes(self) -> int:
        """multi-model-server's request limit: a lone request at the limit, or a full envelope (plus its framing)."""
        return max(self.max_payload_bytes, self.batch_part_bytes * self.batch_size) + 1024 * 1024

    @property
    def jvm_heap_mb(self) -> int:
        """Enough for what MMS holds: its base heap, plus a few copies of each large request it may have at once
        (one per worker: the front sends no more)."""
        if self.max_payload_mb <= params.REALTIME_MAX_PAYLOAD_MB:
            return params.JVM_BASE_HEAP_MB
        return params.JVM_BASE_HEAP_MB + params.JVM_HEAP_COPIES * self.workers * self.max_payload_mb

    @property
    def max_image_pixels(self) -> int:
        return max_image_pixels(self.max_payload_mb)

    @property
    def mms_management_port(self) -> int:
        return self.mms_port + 1

    @property
    def max_concurrent_transforms(self) -> int:
        """What batch transform may send at once: one request per worker keeps latency flat."""
        return self.workers

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ServingConfig:
        env = os.environ if environ is None else environ
        cpus = len(os.sched_getaffinity(0))
        workers = _int(env, params.WORKERS_ENV, 1)
        return cls(
            port=_int(env, params.BIND_PORT_ENV, params.DEFAULT_PORT),
            workers=workers,
            timeout_seconds=_int(env, params.TIMEOUT_ENV, params.DEFAULT_TIMEOUT_SECONDS),
            max_payload_mb=max_payload_mb(env),
            multi_model=env.get(params.MULTI_MODEL_ENV, "false").lower() == "true",
            base_dir=Path(env.get(params.BASE_DIR_ENV) or params.DEFAULT_BASE_DIR),
            batch_size=_int(env, params.BATCH_SIZE_ENV, DEFAULT_BATCH_SIZE),
            max_batch_delay_ms=_int(env, params.MAX_BATCH_DELAY_ENV, DEFAULT_MAX_BATCH_DELAY_MS, minimum=0),
            threads_per_worker=_int(env, params.THREADS_ENV, max(1, cpus // workers)),
            mms_port=_int(env, params.MMS_PORT_ENV, 8090),
            batches_in_flight=_int(env, params.BATCHES_IN_FLIGHT_ENV, workers, minimum=0),
            explain=_explain(env),
            prefork=_switch(env, params.PREFORK_ENV),
            metrics=_switch(env, params.METRICS_ENV),
            metrics_sample=_fraction(env, params.METRICS_SAMPLE_ENV),
            metrics_namespace=env.get(params.METRICS_NAMESPACE_ENV, "").strip() or params.DEFAULT_METRICS_NAMESPACE,
            metrics_scope=_scope(env),
        )


def max_payload_mb(env: Mapping[str, str]) -> int:
    """``SAGEMAKER_MAX_PAYLOAD_IN_MB``, refused above the ceiling this container is measured to handle (the
    workers read it too: their decode guard follows it)."""
    value = _int(env, params.MAX_PAYLOAD_ENV, params.DEFAULT_MAX_PAYLOAD_MB)
    if value > params.MAX_PAYLOAD_CEILING_MB:
        raise UserError(
            f"{params.MAX_PAYLOAD_ENV}={value} is above the {params.MAX_PAYLOAD_CEILING_MB} MB this container is measured "
            "to handle (docs/serving.md#limits)"
        )
    return value


def max_image_pixels(payload_mb: int) -> int:
    """The decode guard (declared pixels): 40 MP up to the real-time limit; above it, what a photo of that many
    bytes can hold (a JPEG under 1 byte a pixel, a PNG 2-3), so a large real image passes and a small bomb does not grow."""
    return max(params.MAX_IMAGE_PIXELS, payload_mb * 1024 * 1024 * params.PIXELS_PER_PAYLOAD_BYTE)


def _switch(env: Mapping[str, str], name: str) -> bool:
    value = env.get(name, "on").strip().lower() or "on"
    if value not in ("on", "off", "true", "false", "1", "0"):
        raise UserError(f"{name}={value!r}: use on or off")
    return value in ("on", "true", "1")


def _fraction(env: Mapping[str, str], name: str) -> float:
    raw = env.get(name, "").strip()
    try:
        value = float(raw) if raw else 1.0
    except ValueError:
        raise UserError(f"{name}={raw!r} is not a number") from None
    if not 0.0 <= value <= 1.0:
        raise UserError(f"{name}={value} must be between 0 and 1")
    return value


def _explain(env: Mapping[str, str]) -> str | None:
    value = env.get(params.EXPLAIN_ENV, "").strip().lower()
    if value in ("", params.EXPLAIN_OFF):
        return None
    if value not in params.EXPLAIN_METHODS:
        raise UserError(f"{params.EXPLAIN_ENV}={value!r}: use one of {', '.join(params.EXPLAIN_METHODS)} or off")
    return value


def _scope(env: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    """Both dimensions or none: an alarm on (Endpoint, ModelVersion) must find both on every line."""
    endpoint, version = env.get(params.ENDPOINT_ENV, "").strip(), env.get(params.MODEL_VERSION_ENV, "").strip()
    if not endpoint and not version:
        return ()
    return ((params.ENDPOINT_DIMENSION, endpoint or "unknown"), (params.MODEL_VERSION_DIMENSION, version or "unknown"))
