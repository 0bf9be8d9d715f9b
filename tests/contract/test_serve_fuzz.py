"""Fuzzing ``POST /invocations`` of a real ``serve`` with generated bodies (hypothesis).

Every answer must be a 200 with a well-formed prediction for each image, or a 4xx JSON error;
never a 5xx, never a dropped connection. Valid generated images (random sizes, modes, formats)
must get 200, so a server that refused everything with 400 would fail here. Fuzzed bodies go in
raw and inside JSON batches, several at a time so MMS batches them together. Afterwards the
very same workers are alive and a good request succeeds.

The model is one of ours (a model card, our handler): a model with its own inference code decides
its own content types and may answer 5xx (tests/contract/test_serve_user_code.py).

Each test keeps its own tally and compares the workers with those it found at its start, so
the tests pass or fail alone, in any order, sharing only the (module-scoped) server.
"""

from __future__ import annotations

import base64
import json
import struct
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from tests.helpers import ServeProcess
from tests.reliability import FIGURES, encoded, scaled, worker_fingerprint

BODIES = scaled(1_040, 5_200)  # requests sent by the fuzz test (make test / make test-full)
PER_EXAMPLE = 8  # sent concurrently, so MMS batches fuzzed requests with each other
PAYLOAD_MB = 2
RAW_TYPES = ["image/jpeg", "image/png", "application/x-image", "image/webp", "image/bmp", "image/gif", "image/tiff"]
OTHER_TYPES = ["text/plain", "application/octet-stream", "multipart/form-data", "", "image/svg+xml", "application/xml"]
ACCEPTS = ["application/json", "application/jsonlines", "application/json;verbose=true", "*/*", "application/*", None]

# Pillow formats and the modes each can store (checked by saving and re-reading each pair)
FORMAT_MODES = {
    "PNG": ["1", "L", "LA", "P", "RGB", "RGBA", "I;16"],
    "JPEG": ["L", "RGB", "CMYK"],
    "WEBP": ["L", "RGB", "RGBA"],
    "GIF": ["L", "P", "RGB"],
    "BMP": ["1", "L", "P", "RGB", "RGBA"],
    "TIFF": ["1", "L", "LA", "P", "RGB", "RGBA", "CMYK", "YCbCr", "LAB", "I;16", "I", "F"],
    "PPM": ["1", "L", "RGB", "I;16"],
    "TGA": ["L", "RGB", "RGBA", "P"],
    "ICO": ["RGBA"],
}
BYTES_PER_PIXEL = {"L": 1, "P": 1, "LA": 2, "RGB": 3, "YCbCr": 3, "LAB": 3, "RGBA": 4, "CMYK": 4, "I;16": 2, "I": 4, "F": 4}


@dataclass
class Tally:
    """What one test sent and got back."""

    sent: list[str] = field(default_factory=list)  # one category name per request sent
    statuses: dict[int, int] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)


@dataclass(frozen=True)
class Case:
    category: str
    content_type: str | None
    body: bytes
    images: int | None  # images a 200 must answer for (None: not known, e.g. a fuzzed JSON document)
    must_succeed: bool
    headers: tuple[tuple[str, str], ...] = ()


@pytest.fixture(scope="module")
def server(digits_job, tmp_path_factory):
    proc = ServeProcess(
        digits_job[0],
        tmp_path_factory.mktemp("serve-fuzz"),
        SAGEMAKER_MODEL_SERVER_WORKERS="2",
        SAGEMAKER_MAX_PAYLOAD_IN_MB=str(PAYLOAD_MB),
        IMAGE_CLASSIFIER_BATCH_SIZE="4",
        IMAGE_CLASSIFIER_MAX_BATCH_DELAY_MS="20",
    )
    proc.wait_ready()
    proc.classes = json.loads((digits_job[0] / "model" / "model_card.json").read_text())["classes"]
    proc.http = requests.Session()
    proc.http.mount("http://", requests.adapters.HTTPAdapter(pool_maxsize=PER_EXAMPLE))
    yield proc
    proc.stop()


# --- strategies ----------------------------------------------------------------------------------


@st.composite
def valid_images(draw, max_side: int = 300) -> tuple[bytes, str]:
    fmt = draw(st.sampled_from(sorted(FORMAT_MODES)))
    mode = draw(st.sampled_from(FORMAT_MODES[fmt]))
    side = 256 if fmt == "ICO" else max_side
    aspect = draw(st.sampled_from(["any", "thin", "tiny"]))
    if aspect == "thin":  # very long and narrow: the centre crop must not blow up memory
        longest = 6_000 if fmt in ("PNG", "GIF", "TIFF") else side
        width, height = draw(st.integers(1, 3)), draw(st.integers(16, max(16, longest)))
    elif aspect == "tiny":
        width, height = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    else:
        width, height = draw(st.integers(1, side)), draw(st.integers(1, side))
    if draw(st.booleans()):
        width, height = height, width
    if fmt == "ICO":
        width, height = min(width, 256), min(height, 256)
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    size = ((width + 7) // 8) * height if mode == "1" else width * height * BYTES_PER_PIXEL[mode]
    pixels = rng.bytes(size) if draw(st.booleans()) else bytes([int(rng.integers(256))]) * size  # noise or flat
    image = Image.frombytes(mode, (width, height), pixels)
    options: dict = {}
    if fmt == "JPEG":
        options = {"quality": draw(st.integers(5, 100)), "progressive": draw(st.booleans())}
        if draw(st.booleans()):
            exif = Image.Exif()
            exif[0x0112] = draw(st.integers(1, 8))  # every EXIF orientation
            options["exif"] = exif.tobytes()
    elif fmt == "TIFF":
        options = {"compression": draw(st.sampled_from([None, "tiff_lzw", "tiff_deflate", "packbits"]))}
    elif fmt == "WEBP":
        options = {"lossless": draw(st.booleans())}
    elif fmt in ("GIF", "PNG") and mode in ("L", "P", "RGB", "RGBA") and draw(st.booleans()):
        frames = [image, Image.frombytes(mode, (width, height), rng.bytes(size))]
        options = {"save_all": True, "append_images": frames[1:]}  # animated: the first frame is served
    return encoded(image, fmt, **options), fmt


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


@st.composite
def huge_declared(draw) -> bytes:
    """Headers that declare enormous (or zero) dimensions over little or no pixel data."""
    width = draw(st.sampled_from([0, 1, 7_000, 65_535, 100_000, 2**31 - 1]))
    height = draw(st.sampled_from([0, 1, 7_000, 65_535, 100_000, 2**31 - 1]))
    kind = draw(st.sampled_from(["png", "gif", "bmp", "jpeg", "ppm"]))
    data = draw(st.binary(max_size=64))
    if kind == "png":
        head = _png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
        idat = _png_chunk(b"IDAT", zlib.compress(b"\0" * draw(st.integers(0, 5_000))))
        return b"\x89PNG\r\n\x1a\n" + head + idat + _png_chunk(b"IEND", b"")
    if kind == "gif":
        return b"GIF89a" + struct.pack("<HH", width % 65536, height % 65536) + b"\x00\x00\x00," + data
    if kind == "bmp":
        info = struct.pack("<IiiHHIIiiII", 40, width % 2**31, height % 2**31, 1, 24, 0, 0, 0, 0, 0, 0)
        return b"BM" + struct.pack("<IHHI", 54 + len(data), 0, 0, 54) + info + data
    if kind == "jpeg":
        sof = b"\xff\xc0" + struct.pack(">HBHHB", 11, 8, height % 65536, width % 65536, 1) + b"\x01\x11\x00"
        return b"\xff\xd8" + sof + data + b"\xff\xd9"
    return f"P6\n{width} {height}\n255\n".encode() + data


@st.composite
def corrupt_images(draw) -> bytes:
    data, _ = draw(valid_images(max_side=64))
    how = draw(st.sampled_from(["truncate", "flip", "magic", "splice", "prefix"]))
    if how == "truncate":
        return data[: draw(st.integers(0, max(0, len(data) - 1)))]
    if how == "flip":
        out = bytearray(data)
        for _ in range(draw(st.integers(1, 12))):
            out[draw(st.integers(0, len(out) - 1))] ^= draw(st.integers(1, 255))
        return bytes(out)
    if how == "magic":  # another format's signature, or garbage, over the real one
        magic = draw(
            st.sampled_from([b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF89a", b"BM", b"RIFF", b"II*\x00", b"MM\x00*", b"\0\0\0\0"])
        )
        return magic + data[len(magic) :]
    if how == "splice":
        other, _ = draw(valid_images(max_side=32))
        cut = draw(st.integers(0, len(data)))
        return data[:cut] + other[draw(st.integers(0, len(other))) :]
    return draw(st.binary(min_size=1, max_size=32)) + data


unicode_junk = st.text(alphabet=st.characters(codec="utf-8"), max_size=200)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | unicode_junk,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(unicode_junk | st.just("b64") | st.just("instances"), inner, max_size=5),
    max_leaves=20,
)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@st.composite
def instances(draw) -> tuple[object, bool]:
    """One entry of ``instances`` and whether it is a valid image."""
    kind = draw(st.sampled_from(["valid", "valid", "corrupt", "huge", "bad-b64", "junk", "bare-string"]))
    if kind == "valid":
        return {"b64": _b64(draw(valid_images(max_side=96))[0])}, True
    if kind == "corrupt":
        return {"b64": _b64(draw(corrupt_images()))}, False
    if kind == "huge":
        return {"b64": _b64(draw(huge_declared()))}, False
    if kind == "bad-b64":
        good = _b64(draw(valid_images(max_side=16))[0])
        cut = draw(st.integers(0, len(good)))
        return {"b64": good[:cut] + draw(st.sampled_from(["%", "=", "é", "\x00", " ", "-_", "===="])) + good[cut:]}, False
    if kind == "bare-string":
        return _b64(draw(valid_images(max_side=32))[0]), True  # a bare base64 string is accepted too
    return draw(json_values), False


def _extra_headers(draw) -> tuple[tuple[str, str], ...]:
    headers = []
    accept = draw(st.sampled_from(ACCEPTS))
    if accept:
        headers.append(("Accept", accept))
    if draw(st.booleans()):
        value = draw(st.sampled_from(["top_k=1", "top_k=3", "top_k=10", "top_k=500", "probabilities=true", "top_k=3,probabilities=true"]))
        headers.append(("X-Amzn-SageMaker-Custom-Attributes", value))
    return tuple(headers)


@st.composite
def cases(draw) -> Case:
    category = draw(
        st.sampled_from(
            ["valid-raw", "valid-json", "corrupt", "huge-dimensions", "zero-bytes", "random-bytes", "unicode", "json-shape", "json-batch"]
        )
    )
    headers = _extra_headers(draw)
    if category == "valid-raw":
        data, _ = draw(valid_images())
        return Case(category, draw(st.sampled_from(RAW_TYPES)), data, 1, True, headers)
    if category == "valid-json":
        images = [draw(valid_images(max_side=128))[0] for _ in range(draw(st.integers(1, 4)))]
        body = json.dumps({"instances": [{"b64": _b64(i)} for i in images]}).encode()
        return Case(category, "application/json", body, len(images), True, headers)
    content_type = draw(st.sampled_from([*RAW_TYPES, "application/json", *OTHER_TYPES]))
    if category == "corrupt":
        return Case(category, content_type, draw(corrupt_images()), 1, False, headers)
    if category == "huge-dimensions":
        return Case(category, content_type, draw(huge_declared()), 1, False, headers)
    if category == "zero-bytes":
        return Case(category, content_type, b"\0" * draw(st.sampled_from([0, 1, 8, 1024, 100_000])), 1, False, headers)
    if category == "random-bytes":
        return Case(category, content_type, draw(st.binary(max_size=4096)), 1, False, headers)
    if category == "unicode":
        text = draw(unicode_junk)
        return Case(category, content_type, text.encode(draw(st.sampled_from(["utf-8", "utf-16", "utf-32"]))), None, False, headers)
    if category == "json-shape":
        return Case(category, "application/json", json.dumps(draw(json_values)).encode(), None, False, headers)
    entries = draw(st.lists(instances(), min_size=1, max_size=6))
    body = json.dumps({"instances": [entry for entry, _ in entries]}).encode()
    all_valid = all(ok for _, ok in entries)
    return Case(category, "application/json", body, len(entries), all_valid, headers)


# Documents that random generation seldom reaches: deep nesting, huge numbers, odd encodings.
EDGE_CASES = [
    Case("edge", "application/json", b"[" * 100_000, None, False),
    Case("edge", "application/json", b'{"instances": ' + b"[" * 50_000 + b"]" * 50_000 + b"}", None, False),
    Case("edge", "application/json", b'{"instances": [' + b'{"b64": ' * 20_000 + b"1" + b"}" * 20_000 + b"]}", None, False),
    Case("edge", "application/json", b'{"instances": [{"b64": "' + b"A" * 1_500_000 + b'"}]}', None, False),
    Case("edge", "application/json", b'{"instances": 1e999999}', None, False),
    Case("edge", "application/json", b'{"instances": [' + b"9" * 100_000 + b"]}", None, False),
    Case("edge", "application/json", b"\xef\xbb\xbf" + b'{"instances": []}', None, False),
    Case("edge", "application/json", b'{"instances": [{"b64": "\\ud800"}]}', None, False),
    Case("edge", "application/json", json.dumps({"instances": [{"b64": ""}] * 65}).encode(), None, False),
    Case("edge", "application/json", b"\xff\xfe\x00\x00", None, False),
    Case("edge", "application/json; charset=latin-1", '{"instances": ["é"]}'.encode("latin-1"), None, False),
    Case("edge", "image/png", b"\x89PNG\r\n\x1a\n", 1, False),
    Case("edge", "image/jpeg", b"\xff\xd8\xff\xd9", 1, False),
    Case("edge", "image/png;charset=utf-8", b"\0", 1, False),
    Case("edge", "IMAGE/JPEG", b"\xff\xd8", 1, False),
    Case("edge", "image/png", b"", 1, False, (("Accept", "text/html"),)),
    Case("edge", "image/png", b"x", 1, False, (("X-Amzn-SageMaker-Custom-Attributes", "top_k=-1"),)),
    Case("edge", "image/png", b"x", 1, False, (("X-Amzn-SageMaker-Custom-Attributes", "top_k=" + "9" * 5000),)),
    Case("edge", "image/png", b"x", 1, False, (("Accept", "application/json;" * 400),)),
    # a header line over aiohttp's 8 KB: malformed HTTP, answered by the HTTP parser with a plain 400
    Case("http-framing", "image/png", b"x", 1, False, (("Accept", "application/json;" * 2000),)),
]


# --- checks --------------------------------------------------------------------------------------


def _send(server, case: Case) -> requests.Response:
    headers = dict(case.headers)
    if case.content_type is not None:
        headers["Content-Type"] = case.content_type
    return server.http.post(f"{server.url}/invocations", data=case.body, headers=headers, timeout=120)


def _top_k(case: Case, classes: int) -> int:
    attributes = dict(case.headers).get("X-Amzn-SageMaker-Custom-Attributes", "")
    k = next((int(part[6:]) for part in attributes.split(",") if part.startswith("top_k=")), 5)
    return min(k, classes)


def check_answer(case: Case, response: requests.Response, classes: list[str], tally: Tally) -> None:
    where = f"{case.category} {case.content_type!r} {len(case.body)} bytes {case.body[:60]!r}: {response.status_code} {response.text[:300]}"
    tally.sent.append(case.category)
    tally.statuses[response.status_code] = tally.statuses.get(response.status_code, 0) + 1
    assert response.status_code < 500, where
    if case.must_succeed:
        assert response.status_code == 200, where
    if case.category == "http-framing":
        assert response.status_code == 400, where
        return
    if response.status_code >= 400:
        assert response.headers["Content-Type"].startswith("application/json"), where
        body = response.json()
        assert set(body) == {"error"} and isinstance(body["error"], str) and body["error"], where
        assert "Traceback" not in body["error"], where
        return
    assert response.status_code == 200, where
    kind = response.headers["Content-Type"].split(";")[0]
    if kind == "application/jsonlines":
        predictions = [json.loads(line) for line in response.text.splitlines()]
    else:
        assert kind == "application/json", where
        predictions = response.json()["predictions"]
    if case.images is not None:
        assert len(predictions) == case.images, where
    verbose = "verbose=true" in dict(case.headers).get("Accept", "") or "probabilities=true" in str(case.headers)
    for answer in predictions:
        top = answer["top_k"]
        assert len(top) == _top_k(case, len(classes)), where
        assert answer["label"] == top[0]["label"] == classes[top[0]["index"]], where
        assert all(0.0 <= t["probability"] <= 1.0 for t in top), where
        assert [t["probability"] for t in top] == sorted((t["probability"] for t in top), reverse=True), where
        if verbose:
            assert len(answer["probabilities"]) == len(classes) and abs(sum(answer["probabilities"]) - 1) < 1e-3, where


def _send_all(server, batch: list[Case], tally: Tally) -> None:
    with ThreadPoolExecutor(max_workers=len(batch)) as pool:
        responses = list(pool.map(lambda c: _send(server, c), batch))
    for case, response in zip(batch, responses, strict=True):
        check_answer(case, response, server.classes, tally)


def _assert_still_serving(server, workers: object, sample_images: dict[str, bytes]) -> None:
    """No worker was replaced, and a good request succeeds."""
    assert worker_fingerprint(server) == workers
    good = server.http.post(f"{server.url}/invocations", data=sample_images["png"], headers={"Content-Type": "image/png"}, timeout=30)
    assert good.status_code == 200 and len(good.json()["predictions"]) == 1
    assert "Backend worker process died" not in server.log() and "Worker disconnected" not in server.log()


# --- tests ---------------------------------------------------------------------------------------


@pytest.mark.slow
def test_edge_cases(server, sample_images):
    workers, tally = worker_fingerprint(server), Tally()
    _send_all(server, EDGE_CASES, tally)
    assert len(tally.sent) == len(EDGE_CASES)
    _assert_still_serving(server, workers, sample_images)


@pytest.mark.slow
def test_fuzzed_bodies_get_a_shaped_answer_never_a_5xx(server, sample_images):
    """Every category is sent; the very same workers serve a good request afterwards."""
    workers, tally = worker_fingerprint(server), Tally()

    @settings(
        max_examples=BODIES // PER_EXAMPLE,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
    )
    @given(batch=st.lists(cases(), min_size=PER_EXAMPLE, max_size=PER_EXAMPLE))
    def fuzz(batch: list[Case]) -> None:
        _send_all(server, batch, tally)

    fuzz()
    assert len(tally.sent) >= BODIES, len(tally.sent)
    categories = {
        "valid-raw",
        "valid-json",
        "corrupt",
        "huge-dimensions",
        "zero-bytes",
        "random-bytes",
        "unicode",
        "json-shape",
        "json-batch",
    }
    statuses = tally.statuses
    assert categories <= set(tally.sent), set(tally.sent)
    assert statuses.get(200, 0) > len(tally.sent) // 5 and sum(v for k, v in statuses.items() if 400 <= k < 500) > len(tally.sent) // 5, (
        statuses
    )
    _assert_still_serving(server, workers, sample_images)
    seconds = time.monotonic() - tally.started
    FIGURES["fuzz"] = {"bodies": len(tally.sent), "seconds": round(seconds, 1), "statuses": dict(sorted(statuses.items()))}
