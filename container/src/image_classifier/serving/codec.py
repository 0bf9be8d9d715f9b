"""Requests in, responses out: content types, base64 JSON, top-k, and the errors a client gets.

Decoding is defensive: the declared size of every image is checked from its header before any
pixel is decoded (decompression bombs get a 400, not an out-of-memory worker), and every
failure is a ``RequestError`` with an HTTP status and a one-line reason.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import warnings
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from PIL import Image

from image_classifier import params
from image_classifier.data.loading import to_rgb

IMAGE_TYPES = frozenset({"image/jpeg", "image/png", "application/x-image", "image/webp", "image/bmp", "image/gif", "image/tiff"})
JSON_TYPE = "application/json"
JSONLINES_TYPE = "application/jsonlines"
ACCEPT_TYPES = (JSON_TYPE, JSONLINES_TYPE)
USER_CODE_NOT_EXPLAINED = (
    "this model is served by its own inference code (code/inference.py): the image explains only the models it serves "
    f"itself; remove explain= (and {params.EXPLAIN_ENV})"
)
OVERLAY_OMITTED = f"the answer would pass SageMaker's {params.MAX_RESPONSE_BYTES // 2**20} MB response limit: send fewer images per request"


class RequestError(Exception):
    """A client error: an HTTP status and a reason safe to show (no traceback)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class Explanation:
    """What ``explain=`` asked for: a method of ``params.EXPLAIN_METHODS`` and its target (a label or an
    index; None: the predicted class)."""

    method: str
    target: str | None = None


@dataclass(frozen=True)
class ResponseOptions:
    """Accept and Custom-Attributes, parsed and checked once (in the front), then carried to the worker
    as ``OPTIONS_HEADER`` (``to_header`` / ``from_header``) so the worker never parses them again."""

    accept: str
    top_k: int
    probabilities: bool
    explanation: Explanation | None = None

    def to_header(self) -> str:
        """JSON, ASCII only (a label in explain_class may be any text)."""
        explanation = self.explanation
        return json.dumps(
            [self.accept, self.top_k, self.probabilities, explanation and [explanation.method, explanation.target]],
            separators=(",", ":"),
        )

    @classmethod
    def from_header(cls, text: str) -> ResponseOptions:
        """What ``to_header`` wrote (the front's own header: trusted, not checked again)."""
        accept, top_k, probabilities, explanation = json.loads(text)
        return cls(accept, int(top_k), bool(probabilities), Explanation(*explanation) if explanation else None)

    def limited_to(self, num_classes: int) -> ResponseOptions:
        """top_k no larger than the model's classes (the front does not know them)."""
        return self if self.top_k <= num_classes else replace(self, top_k=num_classes)


# the front's parsed ResponseOptions, on the way to the worker (MMS passes every request header on)
OPTIONS_HEADER = "X-Ic-Response-Options"


def media_type(header: str | None) -> str:
    return (header or "").split(";", 1)[0].strip().lower()


def _media_params(header: str | None) -> dict[str, str]:
    out = {}
    for part in (header or "").split(";")[1:]:
        key, _, value = part.partition("=")
        out[key.strip().lower()] = value.strip().lower()
    return out


def parse_custom_attributes(header: str | None) -> dict[str, str]:
    """``X-Amzn-SageMaker-Custom-Attributes: top_k=3,probabilities=true``."""
    out = {}
    for part in (header or "").replace(";", ",").split(","):
        key, sep, value = part.partition("=")
        if sep:
            out[key.strip().lower()] = value.strip()
    return out


def explain_option(attributes: dict[str, str], default: str | None = None) -> Explanation | None:
    """``explain=<method>`` (or ``default``, the model's ``IMAGE_CLASSIFIER_EXPLAIN``; ``explain=off`` overrides
    it) and ``explain_class=<label or index>``; None: no explanation; a 400 for an unknown method."""
    method = attributes.get("explain", default or params.EXPLAIN_OFF).strip().lower() or params.EXPLAIN_OFF
    if method != params.EXPLAIN_OFF and method not in params.EXPLAIN_METHODS:
        raise RequestError(400, f"custom attribute explain={method!r}: use one of {', '.join(params.EXPLAIN_METHODS)} or off")
    target = attributes.get("explain_class") or None
    if method == params.EXPLAIN_OFF:
        if target is not None:
            raise RequestError(400, "custom attribute explain_class needs explain=<method>")
        return None
    return Explanation(method, target)


def response_options(
    accept_header: str | None, attributes_header: str | None, num_classes: int | None = None, default_explain: str | None = None
) -> ResponseOptions:
    """The request's answer options, or a ``RequestError`` (406, 400); ``num_classes`` bounds top_k (None: unbounded)."""
    accepted = [a.strip() for a in (accept_header or "").split(",") if a.strip()]
    chosen = None
    wants_probabilities = False
    for candidate in accepted or ["*/*"]:
        kind = media_type(candidate)
        if kind in ("*/*", "application/*", ""):
            chosen = JSON_TYPE
        elif kind in ACCEPT_TYPES:
            chosen = kind
        else:
            continue
        wants_probabilities = _media_params(candidate).get("verbose") in ("true", "1", "yes")
        break
    if chosen is None:
        raise RequestError(406, f"unsupported accept type {accept_header!r}; use {' or '.join(ACCEPT_TYPES)}")
    attributes = parse_custom_attributes(attributes_header)
    top_k = params.DEFAULT_TOP_K
    if "top_k" in attributes:
        try:
            top_k = int(attributes["top_k"])
        except ValueError:
            raise RequestError(400, f"custom attribute top_k={attributes['top_k']!r} is not an integer") from None
        if top_k < 1:
            raise RequestError(400, f"custom attribute top_k={top_k} must be at least 1")
    if attributes.get("probabilities", "").lower() in ("true", "1", "yes"):
        wants_probabilities = True
    options = ResponseOptions(chosen, top_k, wants_probabilities, explain_option(attributes, default_explain))
    return options if num_classes is None else options.limited_to(num_classes)


def allow_pixels(max_pixels: int) -> None:
    """Above the real-time limit the guard follows the payload limit (``ServingConfig.max_image_pixels``), past
    Pillow's own bomb threshold (89 MP; it warns in ``Image.open``, before our check): raise Pillow's to twice
    ours, so that ours refuses first, with its message, and Pillow's still stands behind it."""
    Image.MAX_IMAGE_PIXELS = max(Image.MAX_IMAGE_PIXELS or 0, 2 * max_pixels)


def decode_image(data: bytes, what: str = "image", draft_size: int | None = None, max_pixels: int = params.MAX_IMAGE_PIXELS) -> Image.Image:
    """``draft_size``: a JPEG may decode at 1/2, 1/4 or 1/8 scale as long as both sides stay at least
    this large (libjpeg's DCT scaling; a 12 MP photo decodes in 13 ms instead of 124 ms), as the
    trainer decodes (``data.loading.load_rgb``). ``max_pixels``: the declared size refused before decoding."""
    if not data:
        raise RequestError(400, f"{what} is empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            if width < 1 or height < 1 or width * height > max_pixels:
                raise RequestError(400, f"{what} declares {width}x{height} pixels; at most {max_pixels} are accepted")
            if draft_size and image.format == "JPEG":
                image.draft("RGB", (draft_size, draft_size))
            image.load()
            return to_rgb(image)
    except RequestError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise RequestError(400, f"{what} is too large to decode: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - Pillow raises many types for bad bytes; all are the client's
        raise RequestError(400, f"{what} could not be decoded as an image ({type(exc).__name__})") from None


def decode_request(
    body: bytes,
    content_type: str | None,
    prepare: Callable[[Image.Image], Any] = lambda image: image,
    draft_size: int | None = None,
    max_pixels: int = params.MAX_IMAGE_PIXELS,
) -> list:
    """One image for raw image bodies; one or many for JSON ``{"instances": [{"b64": ...}]}``.

    ``prepare`` turns each image into what the model takes as soon as it is decoded, so a
    request never holds more than one full-size decoded image (64 large ones would not fit).
    """
    kind = media_type(content_type)
    if kind in IMAGE_TYPES:
        return [prepare(decode_image(body, draft_size=draft_size, max_pixels=max_pixels))]
    if kind != JSON_TYPE:
        raise RequestError(
            415, f"unsupported content type {content_type!r}; use image/jpeg, image/png, application/x-image or application/json"
        )
    if not body:
        raise RequestError(400, "request body is empty")
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):  # RecursionError: nesting deeper than the parser's stack
        raise RequestError(400, "request body is not valid JSON") from None
    instances = document.get("instances") if isinstance(document, dict) else None
    if not isinstance(instances, list) or not instances:
        raise RequestError(400, 'JSON body must be {"instances": [{"b64": "<base64 image>"}, ...]} with at least one instance')
    if len(instances) > params.MAX_IMAGES_PER_REQUEST:
        raise RequestError(400, f"{len(instances)} instances in one request; at most {params.MAX_IMAGES_PER_REQUEST}")
    images = []
    for i, instance in enumerate(instances):
        encoded = instance.get("b64") if isinstance(instance, dict) else instance if isinstance(instance, str) else None
        if not isinstance(encoded, str):
            raise RequestError(400, f'instances[{i}] must be {{"b64": "<base64 image>"}}')
        try:
            raw = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            raise RequestError(400, f"instances[{i}].b64 is not valid base64") from None
        images.append(prepare(decode_image(raw, f"instances[{i}]", draft_size, max_pixels)))
    return images


def encode_predictions(
    probabilities: list[list[float]], classes: list[str], options: ResponseOptions, explanations: list[dict] | None = None
) -> tuple[bytes, str]:
    """JSON ``{"predictions": [...]}`` or one JSON line per image (batch transform).

    ``explanations``: one per image (``serving/explain.py``: method, index, grid, overlay_png), added
    as each prediction's ``explanation`` with the target's label and probability."""
    predictions = []
    for n, row in enumerate(probabilities):
        order = sorted(range(len(row)), key=row.__getitem__, reverse=True)[: options.top_k]
        top = [{"label": classes[i], "index": i, "probability": row[i]} for i in order]
        entry: dict = {"label": top[0]["label"], "probability": top[0]["probability"], "top_k": top}
        if options.probabilities:
            entry["probabilities"] = row
        if explanations is not None:
            explained = explanations[n]
            target = explained["index"]
            entry["explanation"] = {
                "method": explained["method"],
                "label": classes[target],
                "index": target,
                "probability": row[target],
                "grid": explained["grid"],
                "overlay_png": explained["overlay_png"],
            }
        predictions.append(entry)
    if explanations is not None:
        _fit_overlays(predictions)
    if options.accept == JSONLINES_TYPE:
        return "".join(json.dumps(p) + "\n" for p in predictions).encode(), JSONLINES_TYPE
    return json.dumps({"predictions": predictions}).encode(), JSON_TYPE


def _fit_overlays(predictions: list[dict]) -> None:
    """Keep the answer under SageMaker's 6 MB response limit: overlays that would pass it are left out
    (``overlay_png`` null, ``overlay_omitted`` says why); every prediction and grid stays."""
    overlays = [p["explanation"]["overlay_png"] for p in predictions]
    for p in predictions:
        p["explanation"]["overlay_png"] = None
    reasons = len(predictions) * len(json.dumps({"overlay_omitted": OVERLAY_OMITTED}))  # room for every reason
    size = len(json.dumps({"predictions": predictions})) + reasons
    for p, overlay in zip(predictions, overlays, strict=True):
        if size + len(overlay) + 2 <= params.MAX_RESPONSE_BYTES:  # its quotes
            p["explanation"]["overlay_png"] = overlay
            size += len(overlay)
        else:
            p["explanation"]["overlay_omitted"] = OVERLAY_OMITTED


def error_body(message: str) -> bytes:
    return json.dumps({"error": message}).encode()
