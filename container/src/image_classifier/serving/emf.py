"""CloudWatch embedded metric format (EMF): the container's numbers as log lines that CloudWatch turns into metrics.

Why log lines: a SageMaker container's stdout goes to CloudWatch Logs (``/aws/sagemaker/Endpoints/<name>``,
the transform job's log group), and CloudWatch Logs extracts metrics from every JSON event that carries an
``_aws`` member. No agent, no API call, no network: it works under network isolation, where a PutMetricData
call could not leave the container. The format is CloudWatch's "Specification: Embedded metric format":

    {"_aws": {"Timestamp": <ms>, "CloudWatchMetrics": [{"Namespace": "ImageClassifier",
              "Dimensions": [["Model"]], "Metrics": [{"Name": "Latency", "Unit": "Milliseconds"}, ...]}]},
     "Model": "model", "Latency": [12.1, 9.8, ...], "Requests": 37}

Written by hand rather than with ``aws-embedded-metrics``: that library writes one event per ``flush()``, so one
log line per request; here a model's requests are aggregated and written as one line every
``EMF_FLUSH_SECONDS`` (a metric may carry up to ``EMF_MAX_VALUES`` values: CloudWatch keeps each value, so
percentiles stay exact), errors as counts per status. Pure functions and a buffer: the front writes the lines.

Scope: with ``IMAGE_CLASSIFIER_ENDPOINT`` and ``IMAGE_CLASSIFIER_MODEL_VERSION`` set (the deploy pipeline sets
both), every line carries the dimensions ``Endpoint`` and ``ModelVersion`` too, as a second dimension set beside
the first (``[["Model"], ["Endpoint", "ModelVersion"]]``): the series an alarm of one endpoint, or of one
version during a blue/green rollout, watches; the ``Model`` series stay as they were. Such lines add
``ServerErrors``, the 5xx answers summed over status codes, the metric a rollback alarm sums.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Mapping

from image_classifier import params

# Server-Timing stage (serving/timing.py) -> metric name; every one in milliseconds
STAGE_METRICS = {
    "total": "Latency",
    "front": "FrontTime",
    "queue": "QueueTime",
    "hop": "HopTime",
    "worker": "WorkerTime",
    "decode": "DecodeTime",
    "preprocess": "PreprocessTime",
    "forward": "ForwardTime",
    "explain": "ExplainTime",
    "encode": "EncodeTime",
}
UNITS = {name: "Milliseconds" for name in STAGE_METRICS.values()} | {
    "BatchSize": "Count",
    "PayloadBytes": "Bytes",
    "Requests": "Count",
    "Errors": "Count",
    "ModelLoadTime": "Seconds",
    params.SERVER_ERRORS_METRIC: "Count",
}
MODEL_DIMENSION = "Model"
STATUS_DIMENSION = "StatusCode"


def document(
    namespace: str,
    dimensions: Mapping[str, str],
    values: Mapping[str, float | list[float]],
    timestamp_ms: int,
    scope: Mapping[str, str] | None = None,
) -> dict:
    """One EMF event: the dimensions and values at its root, the directive that names them under ``_aws``.
    ``scope``: a second dimension set, ``scope``'s names plus those of ``dimensions`` other than ``Model``."""
    sets = [list(dimensions)]
    if scope:
        sets.append([*scope, *(d for d in dimensions if d != MODEL_DIMENSION)])
        dimensions = {**dimensions, **scope}
    directive = {
        "Namespace": namespace,
        "Dimensions": sets,
        "Metrics": [{"Name": name, "Unit": UNITS[name]} for name in values],
    }
    return {"_aws": {"Timestamp": timestamp_ms, "CloudWatchMetrics": [directive]}, **dimensions, **values}


class EmfBuffer:
    """Per model: sampled values of each metric, the request count and the errors by status, until drained."""

    def __init__(self, namespace: str, max_values: int = params.EMF_MAX_VALUES, scope: Mapping[str, str] | None = None):
        self.namespace, self.max_values, self.scope = namespace, max_values, dict(scope or {})
        self.values: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
        self.requests: Counter[str] = Counter()
        self.errors: dict[str, Counter[int]] = defaultdict(Counter)
        self.loads: list[tuple[str, float]] = []

    def add(self, model: str, status: int, values: Mapping[str, float] | None) -> bool:
        """Count the request; keep its ``values`` (a sampled request's). True once a metric is full: drain soon."""
        self.requests[model] += 1
        if status >= 400:
            self.errors[model][status] += 1
        if not values:
            return False
        kept = self.values[model]
        for name, value in values.items():
            kept[name].append(round(value, 3))
        return any(len(v) >= self.max_values for v in kept.values())

    def model_loaded(self, model: str, seconds: float) -> None:
        self.loads.append((model, round(seconds, 3)))

    def _chunks(self, kept: Mapping[str, list[float]]) -> list[dict[str, float | list[float]]]:
        """The values in events of at most ``max_values`` per metric (EMF's limit: a longer array loses the event).

        ``add`` asks for a drain when a metric is full, but requests keep arriving until it runs.
        """
        longest = max((len(v) for v in kept.values()), default=0)
        step = self.max_values
        chunks: list[dict[str, float | list[float]]] = [
            {name: v[start : start + step] for name, v in kept.items() if v[start : start + step]} for start in range(0, longest, step)
        ]
        return chunks or [{}]

    def drain(self, timestamp_ms: int) -> list[str]:
        """The lines of everything gathered since the last drain (none when nothing happened)."""
        lines = []
        for model, count in self.requests.items():
            for i, values in enumerate(self._chunks(self.values.get(model, {}))):
                if i == 0:
                    values["Requests"] = count
                lines.append(document(self.namespace, {MODEL_DIMENSION: model}, values, timestamp_ms, self.scope))
            for status, errors in sorted(self.errors.get(model, {}).items()):
                dimensions = {MODEL_DIMENSION: model, STATUS_DIMENSION: str(status)}
                lines.append(document(self.namespace, dimensions, {"Errors": errors}, timestamp_ms, self.scope))
            server_errors = sum(n for status, n in self.errors.get(model, {}).items() if status >= 500)
            if self.scope and server_errors:
                values = {params.SERVER_ERRORS_METRIC: server_errors}
                lines.append(document(self.namespace, {MODEL_DIMENSION: model}, values, timestamp_ms, self.scope))
        for model, seconds in self.loads:
            lines.append(document(self.namespace, {MODEL_DIMENSION: model}, {"ModelLoadTime": seconds}, timestamp_ms, self.scope))
        self.values.clear()
        self.requests.clear()
        self.errors.clear()
        self.loads.clear()
        return [json.dumps(line, separators=(",", ":")) for line in lines]
