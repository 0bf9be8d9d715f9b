"""`serve` as a real process: the front, multi-model-server (Java) and its Python workers."""

from __future__ import annotations

import base64
import io
import json
import math
import struct
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
from PIL import Image
from torchvision.transforms import v2

from image_classifier.serving.model import LoadedModel
from tests.helpers import ServeProcess

PAYLOAD_MB = 1


@pytest.fixture(scope="module")
def server(digits_job, tmp_path_factory):
    base, _ = digits_job
    proc = ServeProcess(
        base,
        tmp_path_factory.mktemp("serve"),
        SAGEMAKER_MODEL_SERVER_WORKERS="2",
        SAGEMAKER_MAX_PAYLOAD_IN_MB=str(PAYLOAD_MB),
        IMAGE_CLASSIFIER_BATCH_SIZE="8",
        IMAGE_CLASSIFIER_MAX_BATCH_DELAY_MS="50",
    )
    proc.seen_before_ready = proc.wait_ready()
    proc.workers_at_start = _workers(proc)
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def reference(digits_job):
    """In-process inference on the same artifact: what every answer must match."""
    return LoadedModel(digits_job[0] / "model")


def _expected(reference, data: bytes):
    """The calibrated softmax, computed here from the raw logits and the card's temperature."""

    from image_classifier.serving.codec import decode_image

    logits = reference.runner(reference._batch([reference.prepare(decode_image(data))]))
    return (logits / reference.card.temperature).softmax(dim=1)[0].tolist()


def test_the_model_card_carries_a_fitted_temperature(reference):
    assert reference.card.temperature is not None and reference.card.temperature != 1.0
    assert reference.temperature == reference.card.temperature


def _check(answer: dict, expected: list[float], classes: list[str]):
    top = max(range(len(expected)), key=expected.__getitem__)
    assert answer["label"] == classes[top]
    assert answer["probability"] == pytest.approx(expected[top], abs=1e-4)
    for entry in answer["top_k"]:
        assert entry["probability"] == pytest.approx(expected[entry["index"]], abs=1e-4)


def test_ping_is_not_200_before_the_model_loaded(server):
    assert server.seen_before_ready[-1] == 200
    assert any(s == 503 for s in server.seen_before_ready), server.seen_before_ready[:10]
    assert "event=ready" in server.log() and "event=model_loaded" in server.log()


@pytest.mark.parametrize(("content_type", "fmt"), [("image/jpeg", "jpeg"), ("image/png", "png"), ("application/x-image", "webp")])
def test_raw_image_bodies(server, reference, sample_images, content_type, fmt):
    response = requests.post(f"{server.url}/invocations", data=sample_images[fmt], headers={"Content-Type": content_type}, timeout=30)
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"].startswith("application/json")
    predictions = response.json()["predictions"]
    assert len(predictions) == 1 and len(predictions[0]["top_k"]) == 5
    _check(predictions[0], _expected(reference, sample_images[fmt]), reference.classes)


def test_json_base64_single_and_batch(server, reference, sample_images):
    instances = [{"b64": base64.b64encode(sample_images[f]).decode()} for f in ("jpeg", "png", "webp")]
    response = requests.post(f"{server.url}/invocations", json={"instances": instances}, timeout=30)
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    assert len(predictions) == 3
    for fmt, answer in zip(("jpeg", "png", "webp"), predictions, strict=True):
        _check(answer, _expected(reference, sample_images[fmt]), reference.classes)
    single = requests.post(f"{server.url}/invocations", json={"instances": instances[:1]}, timeout=30)
    assert len(single.json()["predictions"]) == 1


def test_top_k_probabilities_and_jsonlines(server, sample_images):
    headers = {"Content-Type": "image/png", "X-Amzn-SageMaker-Custom-Attributes": "top_k=3"}
    answer = requests.post(f"{server.url}/invocations", data=sample_images["png"], headers=headers, timeout=30).json()["predictions"][0]
    assert len(answer["top_k"]) == 3 and "probabilities" not in answer
    probs = [e["probability"] for e in answer["top_k"]]
    assert probs == sorted(probs, reverse=True)
    verbose = requests.post(
        f"{server.url}/invocations",
        data=sample_images["png"],
        headers={"Content-Type": "image/png", "Accept": "application/json;verbose=true"},
        timeout=30,
    ).json()
    full = verbose["predictions"][0]["probabilities"]  # Clarify's JMESPath: predictions[0].probabilities
    assert len(full) == 10 and sum(full) == pytest.approx(1.0, abs=1e-4)
    instances = [{"b64": base64.b64encode(sample_images["png"]).decode()}] * 2
    lines = requests.post(
        f"{server.url}/invocations", json={"instances": instances}, headers={"Accept": "application/jsonlines"}, timeout=30
    )
    assert lines.status_code == 200 and lines.headers["Content-Type"].startswith("application/jsonlines")
    rows = [json.loads(line) for line in lines.text.splitlines()]
    assert len(rows) == 2 and rows[0]["label"] == answer["label"]


def test_execution_parameters(server):
    assert requests.get(f"{server.url}/execution-parameters", timeout=10).json() == {
        "MaxConcurrentTransforms": 2,
        "BatchStrategy": "SINGLE_RECORD",
        "MaxPayloadInMB": PAYLOAD_MB,
    }


def _bomb_png(width=100_000, height=100_000) -> bytes:
    """A valid PNG header declaring 10^10 pixels; decoding it would need tens of GB."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + header
    ihdr = struct.pack(">I", len(header)) + chunk + struct.pack(">I", zlib.crc32(chunk))
    data = zlib.compress(b"\x00" * 1000)
    idat = struct.pack(">I", len(data)) + b"IDAT" + data + struct.pack(">I", zlib.crc32(b"IDAT" + data))
    return b"\x89PNG\r\n\x1a\n" + ihdr + idat


def _truncated_jpeg(sample_images) -> bytes:
    return sample_images["jpeg"][: len(sample_images["jpeg"]) // 3]


@pytest.mark.parametrize(
    ("name", "status", "request_kwargs"),
    [
        ("empty body", 400, {"data": b"", "headers": {"Content-Type": "image/jpeg"}}),
        ("undecodable", 400, {"data": b"\xff\xd8 not really a jpeg", "headers": {"Content-Type": "image/jpeg"}}),
        ("malformed json", 400, {"data": b'{"instances": [', "headers": {"Content-Type": "application/json"}}),
        ("json without instances", 400, {"data": b'{"images": []}', "headers": {"Content-Type": "application/json"}}),
        ("invalid base64", 400, {"json": {"instances": [{"b64": "%%%not base64%%%"}]}}),
        ("unsupported content type", 415, {"data": b"hello", "headers": {"Content-Type": "text/csv"}}),
        ("unsupported accept", 406, {"data": b"x", "headers": {"Content-Type": "image/png", "Accept": "text/html"}}),
        ("bad top_k", 400, {"data": b"x", "headers": {"Content-Type": "image/png", "X-Amzn-SageMaker-Custom-Attributes": "top_k=many"}}),
        ("over the payload limit", 413, {"data": b"\0" * (PAYLOAD_MB * 1024 * 1024 + 10), "headers": {"Content-Type": "image/png"}}),
        ("decompression bomb", 400, {"data": _bomb_png(), "headers": {"Content-Type": "image/png"}}),
    ],
)
def test_errors_are_json_with_a_real_status_and_the_next_request_succeeds(server, sample_images, name, status, request_kwargs):
    response = requests.post(f"{server.url}/invocations", timeout=30, **request_kwargs)
    assert response.status_code == status, (name, response.status_code, response.text)
    body = response.json()
    assert set(body) == {"error"} and "Traceback" not in body["error"] and body["error"]
    good = requests.post(f"{server.url}/invocations", data=sample_images["png"], headers={"Content-Type": "image/png"}, timeout=30)
    assert good.status_code == 200


def test_truncated_image_is_a_400(server, sample_images):
    response = requests.post(
        f"{server.url}/invocations", data=_truncated_jpeg(sample_images), headers={"Content-Type": "image/jpeg"}, timeout=30
    )
    assert response.status_code == 400 and "error" in response.json()


def test_unknown_routes_are_json_404(server):
    response = requests.get(f"{server.url}/nope", timeout=10)
    assert response.status_code == 404 and "error" in response.json()


def test_concurrent_mixed_traffic_matches_in_process_inference(server, reference, sample_images, digits_data):
    """8 clients, 240 requests, every content type; each answer equals in-process inference."""
    photos = []
    for path in sorted((digits_data / "test").rglob("*.png"))[:40]:
        buffer = io.BytesIO()
        Image.open(path).convert("RGB").resize((48, 48)).save(buffer, format="JPEG", quality=90)
        photos.append(buffer.getvalue())
    expected = [_expected(reference, p) for p in photos]

    def call(i: int):
        photo = photos[i % len(photos)]
        kind = i % 3
        if kind == 0:
            r = requests.post(f"{server.url}/invocations", data=photo, headers={"Content-Type": "image/jpeg"}, timeout=60)
        elif kind == 1:
            r = requests.post(f"{server.url}/invocations", data=photo, headers={"Content-Type": "application/x-image"}, timeout=60)
        else:
            r = requests.post(f"{server.url}/invocations", json={"instances": [{"b64": base64.b64encode(photo).decode()}]}, timeout=60)
        return i, r.status_code, r.json()

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(call, range(240)))
    assert [status for _, status, _ in results].count(200) == 240, [r for r in results if r[1] != 200][:3]
    for i, _, body in results:
        _check(body["predictions"][0], expected[i % len(photos)], reference.classes)
    batches = [line for line in server.log().splitlines() if "event=batch " in line]
    assert any("requests=1 " not in line for line in batches), "cross-request batching never happened"


def test_one_bad_request_in_a_batch_fails_alone(server, sample_images):
    good = sample_images["png"]
    payloads = [(good, "image/png") if i % 4 else (b"\x89PNG broken", "image/png") for i in range(32)]

    def call(item):
        data, content_type = item
        return requests.post(f"{server.url}/invocations", data=data, headers={"Content-Type": content_type}, timeout=60)

    with ThreadPoolExecutor(max_workers=16) as pool:
        responses = list(pool.map(call, payloads))
    for i, response in enumerate(responses):
        assert response.status_code == (200 if i % 4 else 400), (i, response.status_code, response.text)
    mixed = [line for line in server.log().splitlines() if "event=batch " in line and "requests=" in line]
    assert any(_field(line, "accepted") not in (0, _field(line, "requests")) for line in mixed), "no batch mixed good and bad requests"


def _field(line: str, name: str) -> int:
    return int(line.split(f"{name}=")[1].split()[0])


def test_model_card_drives_preprocessing(digits_job, reference):
    card = json.loads((Path(digits_job[0]) / "model" / "model_card.json").read_text())
    assert reference.classes == card["classes"]
    (crop,) = [t for t in reference.transform.transforms if isinstance(t, v2.CenterCrop)]
    assert list(crop.size) == [card["preprocessing"]["input_size"]] * 2
    (resize,) = [t for t in reference.transform.transforms if isinstance(t, v2.Resize)]
    assert resize.size == [math.floor(card["preprocessing"]["input_size"] / card["preprocessing"]["crop_pct"])]


def _workers(proc) -> list[tuple[str, str, str]]:
    """The MMS workers behind the front (its management API listens on 127.0.0.1 only)."""
    described = requests.get(f"http://127.0.0.1:{proc.mms_port + 1}/models/model", timeout=10).json()
    model = described[0] if isinstance(described, list) else described
    return sorted((w["id"], w["startTime"], w["status"]) for w in model["workers"])


def test_no_worker_died_during_this_module(server):
    """Runs last: after every error above, the very same two workers are still READY."""
    assert len(server.workers_at_start) == 2
    assert _workers(server) == server.workers_at_start
    assert all(status == "READY" for *_, status in server.workers_at_start)
