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

    @property
    def model_dir(self) -> Path:
        return self.base_dir / params.MODEL_DIR

    @property
    def max_payload_bytes(self) -> int:
        return self.max_payload_mb * 1024 * 1024

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
            max_payload_mb=_int(env, params.MAX_PAYLOAD_ENV, params.DEFAULT_MAX_PAYLOAD_MB),
            multi_model=env.get(params.MULTI_MODEL_ENV, "false").lower() == "true",
            base_dir=Path(env.get(params.BASE_DIR_ENV) or params.DEFAULT_BASE_DIR),
            batch_size=_int(env, params.BATCH_SIZE_ENV, DEFAULT_BATCH_SIZE),
            max_batch_delay_ms=_int(env, params.MAX_BATCH_DELAY_ENV, DEFAULT_MAX_BATCH_DELAY_MS, minimum=0),
            threads_per_worker=_int(env, params.THREADS_ENV, max(1, cpus // workers)),
            mms_port=_int(env, params.MMS_PORT_ENV, 8090),
            batches_in_flight=_int(env, params.BATCHES_IN_FLIGHT_ENV, workers, minimum=0),
            explain=_explain(env),
        )


def _explain(env: Mapping[str, str]) -> str | None:
    value = env.get(params.EXPLAIN_ENV, "").strip().lower()
    if value in ("", params.EXPLAIN_OFF):
        return None
    if value not in params.EXPLAIN_METHODS:
        raise UserError(f"{params.EXPLAIN_ENV}={value!r}: use one of {', '.join(params.EXPLAIN_METHODS)} or off")
    return value
