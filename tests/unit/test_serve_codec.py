"""serving/codec.py as pure functions: content negotiation, decoding, encoding, errors; no server."""

from __future__ import annotations

import base64
import io
import json
import struct
import zlib

import pytest
from PIL import Image

from image_classifier import params
from image_classifier.serving.codec import (
    JSON_TYPE,
    JSONLINES_TYPE,
    RequestError,
    ResponseOptions,
    decode_image,
    decode_request,
    encode_predictions,
    error_body,
    media_type,
    parse_custom_attributes,
    response_options,
)

CLASSES = ["cat", "dog", "fox"]


def _image(fmt: str = "PNG", size: tuple[int, int] = (40, 30), mode: str = "RGB") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, 128).save(buffer, format=fmt)
    return buffer.getvalue()


def _declared_png(width: int, height: int) -> bytes:
    """A real 1x1 PNG whose header is rewritten to declare ``width`` x ``height``."""
    data = bytearray(_image("PNG", (1, 1)))
    header = struct.pack(">II", width, height) + bytes(data[24:29])
    data[16:29] = header
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + header))
    return bytes(data)


def _status(call) -> tuple[int, str]:
    with pytest.raises(RequestError) as info:
        call()
    return info.value.status, info.value.message


def test_media_type_ignores_parameters_and_case():
    assert media_type("Image/JPEG; charset=binary") == "image/jpeg"
    assert media_type(None) == "" and media_type("") == ""


def test_custom_attributes_take_commas_and_semicolons():
    assert parse_custom_attributes("top_k=3, Probabilities=true;x=1") == {"top_k": "3", "probabilities": "true", "x": "1"}
    assert parse_custom_attributes(None) == {} and parse_custom_attributes("no-equals-sign") == {}


@pytest.mark.parametrize(
    ("accept", "attributes", "expected"),
    [
        (None, None, ResponseOptions(JSON_TYPE, 3, False)),
        ("*/*", "top_k=2", ResponseOptions(JSON_TYPE, 2, False)),
        ("application/jsonlines", None, ResponseOptions(JSONLINES_TYPE, 3, False)),
        ("text/html, application/json;verbose=true", None, ResponseOptions(JSON_TYPE, 3, True)),
        ("application/json", "probabilities=true,top_k=99", ResponseOptions(JSON_TYPE, 3, True)),
    ],
)
def test_response_options_negotiate_accept_top_k_and_probabilities(accept, attributes, expected):
    assert response_options(accept, attributes, num_classes=3) == expected


@pytest.mark.parametrize(
    ("accept", "attributes", "status", "reason"),
    [
        ("text/html", None, 406, "unsupported accept type"),
        (None, "top_k=two", 400, "is not an integer"),
        (None, "top_k=0", 400, "must be at least 1"),
    ],
)
def test_response_options_refuse_with_a_status(accept, attributes, status, reason):
    got, message = _status(lambda: response_options(accept, attributes, num_classes=3))
    assert got == status and reason in message


@pytest.mark.parametrize(
    ("accept", "attributes", "default_explain"),
    [
        (None, None, None),
        ("application/jsonlines", "top_k=99,probabilities=true", None),
        (None, "explain=saliency,explain_class=chat \u00e9 \u732b, top_k=2", None),
        (None, "explain_class=3", "gradcam"),  # the endpoint's default method, this request's target
        (None, "explain=off", "gradcam"),
    ],
)
def test_options_parsed_in_the_front_reach_the_worker_unchanged(accept, attributes, default_explain):
    """The front parses once and sends ``OPTIONS_HEADER``; the worker reads back the same object (ASCII on the wire)."""
    options = response_options(accept, attributes, default_explain=default_explain)
    wired = options.to_header()
    assert wired.isascii()
    assert ResponseOptions.from_header(wired) == options
    assert ResponseOptions.from_header(wired).limited_to(3) == response_options(accept, attributes, 3, default_explain)


def test_decode_image_gives_upright_rgb():
    image = decode_image(_image("PNG", (40, 30), "LA"))
    assert image.mode == "RGB" and image.size == (40, 30)


def test_decode_image_draft_decodes_a_jpeg_at_reduced_scale_but_not_below_the_size_asked():
    big = _image("JPEG", (800, 600))
    assert decode_image(big).size == (800, 600)
    small = decode_image(big, draft_size=150)
    assert small.size == (200, 150)  # 1/4 scale keeps both sides >= 150; 1/8 would not


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "is empty"),
        (b"not an image", "could not be decoded"),
        (_image("PNG")[:60], "could not be decoded"),
        (_declared_png(8_000, 6_000), f"at most {params.MAX_IMAGE_PIXELS}"),  # ours, from the header alone
        (_declared_png(10_000, 10_000), "too large to decode"),  # Pillow's own decompression-bomb limit
    ],
)
def test_decode_image_refuses_bad_bytes_with_400_before_decoding_bombs(data, reason):
    status, message = _status(lambda: decode_image(data))
    assert status == 400 and reason in message


def test_decode_request_raw_and_json_batches():
    png = _image("PNG")
    assert len(decode_request(png, "image/png")) == 1
    body = json.dumps({"instances": [{"b64": base64.b64encode(png).decode()}, base64.b64encode(png).decode()]}).encode()
    sizes = decode_request(body, "application/json; charset=utf-8", prepare=lambda image: image.size)
    assert sizes == [(40, 30), (40, 30)]  # ``prepare`` runs on each image as it is decoded


@pytest.mark.parametrize(
    ("body", "content_type", "status", "reason"),
    [
        (b"x", "text/plain", 415, "unsupported content type"),
        (b"", JSON_TYPE, 400, "body is empty"),
        (b"{not json", JSON_TYPE, 400, "not valid JSON"),
        (b"[" * 100_000, JSON_TYPE, 400, "not valid JSON"),
        (b'{"instances": []}', JSON_TYPE, 400, "at least one instance"),
        (b'{"instances": [{"b64": 3}]}', JSON_TYPE, 400, "instances[0] must be"),
        (b'{"instances": [{"b64": "***"}]}', JSON_TYPE, 400, "instances[0].b64 is not valid base64"),
        (json.dumps({"instances": ["AA=="] * (params.MAX_IMAGES_PER_REQUEST + 1)}).encode(), JSON_TYPE, 400, "at most"),
    ],
)
def test_decode_request_refuses_what_it_cannot_take(body, content_type, status, reason):
    got, message = _status(lambda: decode_request(body, content_type))
    assert got == status and reason in message


def test_encode_predictions_sorts_top_k_and_keeps_the_full_row_on_request():
    rows = [[0.1, 0.7, 0.2], [0.5, 0.2, 0.3]]
    body, kind = encode_predictions(rows, CLASSES, ResponseOptions(JSON_TYPE, 2, True))
    predictions = json.loads(body)["predictions"]
    assert kind == JSON_TYPE and [p["label"] for p in predictions] == ["dog", "cat"]
    assert [t["index"] for t in predictions[0]["top_k"]] == [1, 2] and predictions[0]["probability"] == 0.7
    assert predictions[1]["probabilities"] == rows[1]
    lines, kind = encode_predictions(rows, CLASSES, ResponseOptions(JSONLINES_TYPE, 1, False))
    parsed = [json.loads(line) for line in lines.decode().splitlines()]
    assert kind == JSONLINES_TYPE and len(parsed) == 2 and "probabilities" not in parsed[0] and len(parsed[0]["top_k"]) == 1


def test_error_body_is_one_json_reason():
    assert json.loads(error_body('bad "quote"')) == {"error": 'bad "quote"'}
