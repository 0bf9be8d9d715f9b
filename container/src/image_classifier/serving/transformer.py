"""A batch-aware transform for sagemaker-inference's handler service.

sagemaker-inference's own ``Transformer`` handles an MMS batch item by item with the first
request's headers and turns one exception into one error for the whole batch. Here every
request is decoded with its own headers; the ones that fail get their own status and JSON error;
all the images of the others go through the model as one tensor. Requests arrive one per MMS
job, or several in one envelope from the front's batcher (see ``batching``).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from image_classifier import params
from image_classifier.serving.batching import ENVELOPE_TYPE, pack, unpack
from image_classifier.serving.codec import (
    JSON_TYPE,
    OPTIONS_HEADER,
    RequestError,
    ResponseOptions,
    allow_pixels,
    decode_request,
    encode_predictions,
    error_body,
    explain_option,
    media_type,
    response_options,
)
from image_classifier.serving.config import max_image_pixels, max_payload_mb
from image_classifier.serving.explain import resolve_target
from image_classifier.serving.model import LoadedModel
from image_classifier.serving.timing import WORKER_HEADER, now_ms, stopwatch, timed, worker_header

log = logging.getLogger(__name__)
Reply = tuple[int, str, bytes]  # status, content type, body


def _headers(context, idx: int) -> dict[str, str]:
    raw = context.get_all_request_header(idx) or {}
    return {str(k).lower(): v if isinstance(v, str) else "" for k, v in raw.items()}


def _body(request) -> bytes:
    value = request.get("body") if isinstance(request, dict) else None
    if value is None and isinstance(request, dict) and request:
        value = next(iter(request.values()))
    if isinstance(value, str):
        return value.encode()
    return bytes(value or b"")


def _error(status: int, message: str) -> Reply:
    return status, JSON_TYPE, error_body(message)


class BatchTransformer:
    def __init__(self) -> None:
        self.model: LoadedModel | None = None
        self.default_explain: str | None = None  # IMAGE_CLASSIFIER_EXPLAIN: every request explained (batch transform)
        self.max_pixels = params.MAX_IMAGE_PIXELS  # the decode guard: follows SAGEMAKER_MAX_PAYLOAD_IN_MB

    def validate_and_initialize(self, model_dir: str | None = None, context=None) -> None:
        if self.model is None:
            threads = int(os.environ.get(params.THREADS_ENV, "0")) or None
            self.model = LoadedModel(Path(model_dir or "."), threads, defer_graph=True)  # the worker answers while its graph builds
            explanation = explain_option({}, os.environ.get(params.EXPLAIN_ENV))
            self.default_explain = explanation.method if explanation else None
            self.max_pixels = max_image_pixels(max_payload_mb(os.environ))
            allow_pixels(self.max_pixels)
            if self.default_explain:  # warm-up: Captum imported, Grad-CAM's layer found, before the first record
                size = self.model.card.preprocessing.input_size
                self.model.explain(self.default_explain, [self.model.prepare(Image.new("RGB", (size, size)))], [0])

    def transform(self, data, context) -> list[bytes]:
        """MMS's entry point: each MMS request is one client request, or an envelope of several.

        Each answer carries where its time went (``timing``: in the envelope's metadata, or the
        ``X-Ic-Worker-Timing`` header of a single request)."""
        responses: list[bytes] = []
        for idx, request in enumerate(data):
            started = now_ms()
            headers, body = _headers(context, idx), _body(request)
            if media_type(headers.get("content-type")) == ENVELOPE_TYPE:
                try:
                    parts = [({str(k).lower(): str(v) for k, v in meta.items()}, part) for meta, part in unpack(body)]
                except ValueError:
                    parts = None
                if parts is not None:
                    replies, timings = self.answer(parts)
                    worker = now_ms() - started
                    body_out = pack(
                        [
                            ({"status": s, "content_type": t, "timing": {"worker": worker, **timing}}, b)
                            for (s, t, b), timing in zip(replies, timings, strict=True)
                        ]
                    )
                    status, content_type = 200, ENVELOPE_TYPE
                else:
                    status, content_type, body_out = _error(400, "malformed batch envelope")
            else:
                (reply,), (timing,) = self.answer([(headers, body)])
                status, content_type, body_out = reply
                context.set_response_header(idx, WORKER_HEADER, worker_header({"worker": now_ms() - started, **timing}))
            # MMS writes the reason phrase with its character count as the byte count: keep it ASCII
            context.set_response_status(status, "OK" if status == 200 else "error", idx)
            context.set_response_content_type(idx, content_type)
            responses.append(body_out)
        return responses

    def answer(self, requests: list[tuple[dict[str, str], bytes]]) -> tuple[list[Reply], list[dict[str, float]]]:
        """One reply per request, and where its time went; the images of every good request run together.

        Requests that ask for an explanation get it from a second pass over their images only
        (``_explain``); the others in the batch are answered from the forward pass alone."""
        assert self.model is not None
        replies: list[Reply | None] = [None] * len(requests)
        timings: list[dict[str, float]] = [{} for _ in requests]
        accepted: list[Accepted] = []
        tensors: list = []
        for idx, (headers, body) in enumerate(requests):
            timing = timings[idx]
            try:
                options = self._options(headers)
                target = self._check_explain(options)
                with stopwatch(timing, "decode"):
                    prepare = timed(self.model.prepare, timing, "preprocess")
                    decoded = decode_request(body, headers.get("content-type"), prepare, self.model.draft_size, self.max_pixels)
                timing["decode"] -= timing.get("preprocess", 0.0)
                if options.explanation and len(decoded) > params.MAX_EXPLAINED_IMAGES:
                    raise RequestError(
                        400,
                        f"{len(decoded)} images with explain={options.explanation.method}; at most {params.MAX_EXPLAINED_IMAGES} per request",
                    )
            except RequestError as exc:
                replies[idx] = _error(exc.status, exc.message)
                continue
            except Exception as exc:  # a bug must fail this request alone, never the batch or the worker
                log.exception("event=decode_failed")
                replies[idx] = _error(500, f"request could not be processed: {type(exc).__name__}")
                continue
            accepted.append(Accepted(idx, options, len(tensors), len(tensors) + len(decoded), target))
            tensors += decoded
        log.info("event=batch requests=%d accepted=%d images=%d", len(requests), len(accepted), len(tensors))
        if accepted:
            forward: dict[str, float] = {}
            try:
                with stopwatch(forward, "forward"):
                    probabilities = self.model.predict_tensors(tensors)
            except Exception as exc:
                log.exception("event=predict_failed")
                for item in accepted:
                    replies[item.idx] = _error(500, f"inference failed: {type(exc).__name__}")
            else:
                explanations = self._explain([a for a in accepted if a.options.explanation], tensors, probabilities, replies, timings)
                for item in accepted:
                    if replies[item.idx] is not None:  # its explanation failed
                        continue
                    with stopwatch(timings[item.idx], "encode"):
                        body, content_type = encode_predictions(
                            probabilities[item.start : item.stop], self.model.classes, item.options, explanations.get(item.idx)
                        )
                    replies[item.idx] = (200, content_type, body)
                    timings[item.idx] |= {"forward": forward["forward"], "images": float(len(tensors))}
        return [reply or _error(500, "no answer") for reply in replies], timings

    def _options(self, headers: dict[str, str]) -> ResponseOptions:
        """The front's parsed options (``OPTIONS_HEADER``); parsed here only for a caller that is not the front
        (a test, or a request sent to multi-model-server directly)."""
        assert self.model is not None
        wired = headers.get(OPTIONS_HEADER.lower())
        if wired is not None:
            return ResponseOptions.from_header(wired).limited_to(len(self.model.classes))
        return response_options(
            headers.get("accept"), headers.get(params.CUSTOM_ATTRIBUTES_HEADER.lower()), len(self.model.classes), self.default_explain
        )

    def _check_explain(self, options: ResponseOptions) -> int | None:
        """A 400 before any work for a target or method this model cannot take; the target's index."""
        if options.explanation is None:
            return None
        assert self.model is not None
        target = resolve_target(options.explanation.target, self.model.classes)
        self.model.explainer.resolve(options.explanation.method)
        return target

    def _explain(self, wanted: list[Accepted], tensors: list, probabilities: list[list[float]], replies, timings) -> dict[int, list[dict]]:
        """Explanations for the requests in ``wanted``, one pass per method; a failure fails those requests alone."""
        assert self.model is not None
        out: dict[int, list[dict]] = {}
        for method in dict.fromkeys(a.method for a in wanted):
            group = [a for a in wanted if a.method == method]
            images, targets = [], []
            for item in group:
                for i in range(item.start, item.stop):
                    images.append(tensors[i])
                    row = probabilities[i]
                    targets.append(item.target if item.target is not None else max(range(len(row)), key=row.__getitem__))
            spent: dict[str, float] = {}
            try:
                with stopwatch(spent, "explain"):
                    explained = self.model.explain(method, images, targets)
            except RequestError as exc:
                for item in group:
                    replies[item.idx] = _error(exc.status, exc.message)
                continue
            except Exception as exc:
                log.exception("event=explain_failed method=%s", method)
                for item in group:
                    replies[item.idx] = _error(500, f"explanation failed: {type(exc).__name__}")
                continue
            log.info("event=explained method=%s images=%d ms=%.1f", method, len(images), spent["explain"])
            offset = 0
            for item in group:
                count = item.stop - item.start
                out[item.idx] = explained[offset : offset + count]
                offset += count
                timings[item.idx]["explain"] = spent["explain"]
        return out


@dataclass(frozen=True)
class Accepted:
    """A request that decoded: its options, its images' slice of the batch, its explanation target (None: predicted)."""

    idx: int
    options: ResponseOptions
    start: int
    stop: int
    target: int | None = None

    @property
    def method(self) -> str:
        """The explanation method (only asked of requests that want one)."""
        assert self.options.explanation is not None
        return self.options.explanation.method
