"""`serve` at the raised payload ceiling (asynchronous endpoints) and its metrics, with two workers.

- A request at the ceiling (``MAX_PAYLOAD_CEILING_MB``: an image just under it) is answered, in a
  forward pass of its own while small requests around it are batched; one declaring a byte more gets
  a JSON 413 at once, its body never read.
- ``GET /metrics``, read by Prometheus' own text parser after concurrent traffic that both workers
  served, counts exactly what was sent, by status; the EMF lines on stdout follow the format.
"""

from __future__ import annotations

import io
import re
import socket
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import requests
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from image_classifier import params
from tests import emf_format
from tests.contract.test_serve_security import _read_response
from tests.helpers import ServeProcess

CEILING_BYTES = params.MAX_PAYLOAD_CEILING_MB * 1024 * 1024
WORKER = re.compile(r" (W-[\w.-]+?)-std(?:out|err) .*event=batch ")  # MMS names the thread W-model-1-stdout


@pytest.fixture(scope="module")
def server(digits_job, tmp_path_factory):
    proc = ServeProcess(
        digits_job[0],
        tmp_path_factory.mktemp("serve-hosting"),
        SAGEMAKER_MODEL_SERVER_WORKERS="2",
        SAGEMAKER_MAX_PAYLOAD_IN_MB=str(params.MAX_PAYLOAD_CEILING_MB),
        IMAGE_CLASSIFIER_BATCH_SIZE="8",
        IMAGE_CLASSIFIER_MAX_BATCH_DELAY_MS="20",
    )
    proc.wait_ready()
    yield proc
    proc.stop()


def _png_just_under(limit: int) -> bytes:
    """A real PNG (noise: it does not compress) a little under ``limit`` bytes."""
    side = int((limit * 0.985 / 3) ** 0.5)
    pixels = np.random.default_rng(0).integers(0, 256, (side, side, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", compress_level=0)
    data = buffer.getvalue()
    assert limit * 0.97 < len(data) <= limit, len(data)
    return data


def _post(url: str, body: bytes, content_type: str = "image/png") -> requests.Response:
    return requests.post(f"{url}/invocations", data=body, headers={"Content-Type": content_type}, timeout=120)


def _samples(url: str) -> dict[tuple[str, tuple], float]:
    text = requests.get(f"{url}/metrics", timeout=10).text
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_a_request_at_the_ceiling_is_answered_alone_and_one_above_it_refused_unread(server, sample_images):
    large = _png_just_under(CEILING_BYTES)
    with ThreadPoolExecutor(max_workers=9) as pool:
        big = pool.submit(_post, server.url, large)
        small = [pool.submit(_post, server.url, sample_images["png"]) for _ in range(24)]
        answers = [f.result() for f in small]
        answer = big.result()
    assert answer.status_code == 200, answer.text[:300]
    assert answer.json()["predictions"][0]["label"].startswith("digit_")
    assert 'desc="batch of 1 images"' in answer.headers["Server-Timing"]  # never batched with the small ones
    assert [a.status_code for a in answers] == [200] * 24
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(
            b"POST /invocations HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/png\r\n"
            + f"Content-Length: {CEILING_BYTES + 1}\r\n\r\n".encode()
            + b"\x89PNG\r\n\x1a\n"  # the rest never comes
        )
        status, body = _read_response(sock, timeout=30)  # the body never completes: a server waiting for it never answers
    assert status == 413 and f"{params.MAX_PAYLOAD_CEILING_MB} MB" in body["error"]


def test_metrics_count_the_traffic_two_workers_served(server, sample_images):
    before = _samples(server.url)
    log_start = len(server.log())
    bodies = [(sample_images["png"], "image/png"), (sample_images["jpeg"], "image/jpeg")] * 50
    with ThreadPoolExecutor(max_workers=8) as pool:
        statuses = [r.status_code for r in pool.map(lambda b: _post(server.url, *b), bodies)]
    assert statuses == [200] * 100
    assert _post(server.url, b"not an image", "image/png").status_code == 400
    assert _post(server.url, sample_images["png"], "text/csv").status_code == 415
    after = _samples(server.url)

    def delta(name: str, **labels: str) -> float:
        key = (name, tuple(sorted({"model": "model", **labels}.items())))
        return after.get(key, 0.0) - before.get(key, 0.0)

    assert delta("image_classifier_requests_total", status="200") == 100
    assert delta("image_classifier_requests_total", status="400") == 1
    assert delta("image_classifier_requests_total", status="415") == 1
    for stage in ("total", "queue", "hop", "worker", "decode", "forward", "encode"):
        assert delta("image_classifier_request_stage_seconds_count", stage=stage) == 100, stage
    assert delta("image_classifier_batch_images_count") == 100
    assert delta("image_classifier_request_bytes_count") == 102
    assert delta("image_classifier_request_bytes_sum") >= 50 * (len(sample_images["png"]) + len(sample_images["jpeg"]))
    assert after[("image_classifier_model_load_seconds", (("model", "model"),))] > 0
    workers = set(WORKER.findall(server.log()[log_start:]))
    assert len(workers) == 2, workers  # both workers served this traffic

    # a metric that holds 100 values has its own EMF line (that it asks for a drain at once, not at the next
    # 10 s flush, is judged without a clock in tests/unit/test_serve_metrics.py)
    def full(document: dict) -> bool:
        return max((len(v) for v in document.values() if isinstance(v, list)), default=0) == params.EMF_MAX_VALUES

    deadline = time.monotonic() + 60
    while not [d for d in emf_format.documents(server.log()) if full(d)]:
        assert time.monotonic() < deadline, server.log()[-3000:]
        time.sleep(0.1)
    documents = emf_format.documents(server.log())  # every EMF line so far, each checked against the format
    assert any(d.get("ModelLoadTime", 0) > 0 for d in documents)
    line = next(d for d in documents if full(d))
    assert line["Model"] == "model" and line["Requests"] >= params.EMF_MAX_VALUES
    assert len(line["Latency"]) == len(line["ForwardTime"]) == len(line["BatchSize"]) > 0  # each 200 brings all three
