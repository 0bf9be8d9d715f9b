"""The container's metrics (EMF lines, Prometheus text) and its limits, without a server.

The same numbers reach both: what ``Metrics.observe`` is given comes out as CloudWatch EMF lines that
follow the format's specification (tests/emf_format.py) and as Prometheus text its own parser reads.
"""

from __future__ import annotations

import asyncio
import json

import pytest
from aiohttp.test_utils import TestClient, TestServer
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from image_classifier import params
from image_classifier.errors import UserError
from image_classifier.serving.codec import RequestError, allow_pixels, decode_image
from image_classifier.serving.config import ServingConfig, max_image_pixels
from image_classifier.serving.emf import EmfBuffer
from image_classifier.serving.front import Front
from image_classifier.serving.metrics import Metrics
from tests import emf_format
from tests.unit.test_serve_codec import _declared_png

STAGES = {
    "total": 20.0,
    "front": 1.0,
    "queue": 2.0,
    "hop": 3.0,
    "worker": 14.0,
    "decode": 2.5,
    "preprocess": 1.5,
    "forward": 9.0,
    "encode": 0.4,
}


def _config(**env: str) -> ServingConfig:
    return ServingConfig.from_env(env)


def _samples(text: str) -> dict[tuple[str, tuple], float]:
    """(sample name, sorted labels) -> value, as Prometheus' own parser reads the text."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_emf_lines_follow_the_format_and_carry_every_number():
    buffer = EmfBuffer("ImageClassifier")
    for i in range(30):
        buffer.add("model", 200, {"Latency": 20.0 + i, "ForwardTime": 9.0, "BatchSize": 4.0, "PayloadBytes": 51234.0})
    buffer.add("model", 413, None)
    buffer.add("model", 413, None)
    buffer.add("model", 400, {"PayloadBytes": 10.0})
    buffer.model_loaded("model", 2.25)
    lines = buffer.drain(1_764_590_000_000)
    assert all(emf_format.problems(line) == [] for line in lines), [emf_format.problems(line) for line in lines]
    documents = [json.loads(line) for line in lines]
    main = next(d for d in documents if "Requests" in d)
    assert main["Model"] == "model" and main["Requests"] == 33
    assert main["Latency"] == [20.0 + i for i in range(30)] and len(main["PayloadBytes"]) == 31
    directive = main["_aws"]["CloudWatchMetrics"][0]
    assert directive["Dimensions"] == [["Model"]] and {"Name": "Latency", "Unit": "Milliseconds"} in directive["Metrics"]
    errors = {d["StatusCode"]: d["Errors"] for d in documents if "Errors" in d}
    assert errors == {"400": 1, "413": 2}
    assert next(d for d in documents if "ModelLoadTime" in d)["ModelLoadTime"] == 2.25
    assert buffer.drain(1_764_590_001_000) == []  # drained: nothing twice


def test_the_format_check_catches_what_cloudwatch_would_drop():
    good = {
        "_aws": {
            "Timestamp": 1,
            "CloudWatchMetrics": [{"Namespace": "N", "Dimensions": [["Model"]], "Metrics": [{"Name": "L", "Unit": "Milliseconds"}]}],
        },
        "Model": "m",
        "L": [1.0],
    }
    assert emf_format.problems(json.dumps(good)) == []
    for broken in (
        {**good, "L": [1.0] * 101},  # more than 100 values
        {k: v for k, v in good.items() if k != "Model"},  # a dimension missing from the root
        {**good, "_aws": {**good["_aws"], "Timestamp": "now"}},
        {
            **good,
            "_aws": {
                "Timestamp": 1,
                "CloudWatchMetrics": [{**good["_aws"]["CloudWatchMetrics"][0], "Metrics": [{"Name": "L", "Unit": "ms"}]}],
            },
        },
    ):
        assert emf_format.problems(json.dumps(broken)), broken


def test_a_full_metric_asks_for_a_drain():
    buffer = EmfBuffer("N", max_values=params.EMF_MAX_VALUES)
    full = [buffer.add("m", 200, {"Latency": 1.0}) for _ in range(params.EMF_MAX_VALUES)]
    assert full[-1] is True and not any(full[:-1])
    assert all(emf_format.problems(line) == [] for line in buffer.drain(1))


def test_values_that_arrive_before_the_drain_runs_go_into_further_events():
    buffer = EmfBuffer("N", max_values=100)
    for i in range(250):  # a burst: the drain asked for at the 100th request runs after the 250th
        buffer.add("m", 200, {"Latency": float(i), "BatchSize": 8.0} if i % 2 else {"Latency": float(i)})
    lines = buffer.drain(1)
    assert all(emf_format.problems(line) == [] for line in lines), [emf_format.problems(line) for line in lines]
    documents = [json.loads(line) for line in lines]
    assert [len(d["Latency"]) for d in documents] == [100, 100, 50]
    assert [value for d in documents for value in d["Latency"]] == [float(i) for i in range(250)]
    assert sum(len(d.get("BatchSize", [])) for d in documents) == 125
    assert [d.get("Requests") for d in documents] == [250, None, None]  # counted once


def test_prometheus_text_counts_what_the_front_answered():
    written: list[list[str]] = []
    metrics = Metrics(_config(), write=written.append)
    for _ in range(7):
        metrics.observe("model", 200, {**STAGES, "images": 4.0}, 40_000)
    metrics.observe("model", 413, None, 70_000_000)
    metrics.observe("other", 404, None, 10)
    metrics.model_loaded("model", 3.5)
    samples = _samples(metrics.exposition().decode())
    assert samples[("image_classifier_requests_total", (("model", "model"), ("status", "200")))] == 7
    assert samples[("image_classifier_requests_total", (("model", "model"), ("status", "413")))] == 1
    assert samples[("image_classifier_request_stage_seconds_count", (("model", "model"), ("stage", "forward")))] == 7
    assert samples[("image_classifier_request_stage_seconds_sum", (("model", "model"), ("stage", "total")))] == pytest.approx(7 * 0.020)
    assert samples[("image_classifier_batch_images_count", (("model", "model"),))] == 7
    assert samples[("image_classifier_request_bytes_sum", (("model", "model"),))] == 7 * 40_000 + 70_000_000
    assert samples[("image_classifier_model_load_seconds", (("model", "model"),))] == 3.5
    asyncio.run(metrics.stop())  # the last EMF lines are written at shutdown
    lines = [line for batch in written for line in batch]
    assert sum(json.loads(line).get("Requests", 0) for line in lines) == 9


def test_sampling_keeps_the_counts_and_drops_the_distributions():
    metrics = Metrics(_config(**{params.METRICS_SAMPLE_ENV: "0"}), write=lambda lines: None)
    for _ in range(5):
        metrics.observe("model", 200, STAGES, 1000)
    samples = _samples(metrics.exposition().decode())
    assert samples[("image_classifier_requests_total", (("model", "model"), ("status", "200")))] == 5
    assert not any(name == "image_classifier_request_stage_seconds_count" for name, _ in samples)
    (line,) = metrics.emf.drain(1)
    assert json.loads(line)["Requests"] == 5 and "Latency" not in json.loads(line)


@pytest.mark.parametrize(("switch", "status"), [("on", 200), ("off", 404)])
def test_the_off_switch_takes_metrics_route_away(switch, status, tmp_path):
    async def get() -> tuple[int, str]:
        front = Front(_config(**{params.METRICS_ENV: switch}), tmp_path)
        async with TestClient(TestServer(front.app())) as client:
            response = await client.get("/metrics")
            return response.status, await response.text()

    got, text = asyncio.run(get())
    assert got == status
    assert ("image_classifier_requests" in text) == (switch == "on")


def test_every_limit_follows_the_payload_limit():
    default = _config()
    assert (default.max_payload_mb, default.jvm_heap_mb, default.max_image_pixels) == (6, params.JVM_BASE_HEAP_MB, params.MAX_IMAGE_PIXELS)
    assert default.max_request_bytes == 16 * 6 * 2**20 + 2**20  # a full envelope of real-time requests
    ceiling = _config(**{params.MAX_PAYLOAD_ENV: str(params.MAX_PAYLOAD_CEILING_MB), params.WORKERS_ENV: "2"})
    assert ceiling.max_payload_bytes == params.MAX_PAYLOAD_CEILING_MB * 2**20
    assert ceiling.batch_part_bytes == 6 * 2**20  # larger requests are never batched
    assert ceiling.max_request_bytes >= ceiling.max_payload_bytes + 2**20
    assert ceiling.jvm_heap_mb == params.JVM_BASE_HEAP_MB + params.JVM_HEAP_COPIES * 2 * params.MAX_PAYLOAD_CEILING_MB
    assert ceiling.max_image_pixels == params.MAX_PAYLOAD_CEILING_MB * 2**20 * params.PIXELS_PER_PAYLOAD_BYTE > params.MAX_IMAGE_PIXELS
    with pytest.raises(UserError, match="measured"):
        _config(**{params.MAX_PAYLOAD_ENV: str(params.MAX_PAYLOAD_CEILING_MB + 1)})
    for bad in ({params.METRICS_ENV: "maybe"}, {params.METRICS_SAMPLE_ENV: "2"}, {params.METRICS_SAMPLE_ENV: "x"}):
        with pytest.raises(UserError):
            _config(**bad)


def test_the_decode_guard_follows_the_payload_limit(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)  # restored after the test
    fifty_megapixels = _declared_png(10_000, 5_000)
    with pytest.raises(RequestError, match=f"at most {params.MAX_IMAGE_PIXELS}"):
        decode_image(fifty_megapixels)  # the real-time guard: refused from the header
    raised = max_image_pixels(params.MAX_PAYLOAD_CEILING_MB)
    allow_pixels(raised)
    with pytest.raises(RequestError) as refused:
        decode_image(fifty_megapixels, max_pixels=raised)
    assert "declares" not in refused.value.message  # past the guard: this 1x1 PNG's missing pixels fail the decode
    with pytest.raises(RequestError, match=f"at most {raised}"):
        decode_image(_declared_png(20_000, 10_000), max_pixels=raised)


def test_lines_of_a_deployed_version_carry_endpoint_and_version_beside_model():
    """What a rollback alarm watches: (Endpoint, ModelVersion) series, ServerErrors summed over 5xx; Model series unchanged."""
    config = _config(**{params.ENDPOINT_ENV: "prod", params.MODEL_VERSION_ENV: "7"})
    written: list[list[str]] = []
    metrics = Metrics(config, write=written.append)
    metrics.observe("model", 200, {**STAGES, "images": 1.0}, 1000)
    metrics.observe("model", 500, None, 10)
    metrics.observe("model", 503, None, 10)
    metrics.observe("model", 413, None, 10)
    lines = metrics.emf.drain(1)
    assert all(emf_format.problems(line) == [] for line in lines), [emf_format.problems(line) for line in lines]
    documents = [json.loads(line) for line in lines]
    main = next(d for d in documents if "Requests" in d)
    assert main["_aws"]["CloudWatchMetrics"][0]["Dimensions"] == [["Model"], ["Endpoint", "ModelVersion"]]
    assert (main["Model"], main["Endpoint"], main["ModelVersion"], main["Requests"]) == ("model", "prod", "7", 4)
    errors = next(d for d in documents if d.get("StatusCode") == "500")
    assert errors["_aws"]["CloudWatchMetrics"][0]["Dimensions"] == [["Model", "StatusCode"], ["Endpoint", "ModelVersion", "StatusCode"]]
    (server,) = [d for d in documents if params.SERVER_ERRORS_METRIC in d]
    assert server[params.SERVER_ERRORS_METRIC] == 2 and server["_aws"]["CloudWatchMetrics"][0]["Dimensions"][1] == [
        "Endpoint",
        "ModelVersion",
    ]
    samples = _samples(metrics.exposition().decode())
    key = ("image_classifier_requests_total", (("endpoint", "prod"), ("model", "model"), ("model_version", "7"), ("status", "500")))
    assert samples[key] == 1
    # without the variables: the lines and labels of before
    plain = Metrics(_config())
    plain.observe("model", 500, None, 10)
    assert all(params.SERVER_ERRORS_METRIC not in line and "Endpoint" not in line for line in plain.emf.drain(1))
