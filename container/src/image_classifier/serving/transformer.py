"""A batch-aware transform for sagemaker-inference's handler service.

sagemaker-inference's own ``Transformer`` handles an MMS batch item by item with the first
request's headers and turns one exception into one error for the whole batch. Here every
request of a batch is decoded with its own headers; the ones that fail get their own status and
JSON error; all the images of the others go through the model as one tensor.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from image_classifier import params
from image_classifier.serving.codec import RequestError, ResponseOptions, decode_request, encode_predictions, error_body, response_options
from image_classifier.serving.model import LoadedModel

log = logging.getLogger(__name__)


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


class BatchTransformer:
    def __init__(self) -> None:
        self.model: LoadedModel | None = None

    def validate_and_initialize(self, model_dir: str | None = None, context=None) -> None:
        if self.model is None:
            threads = int(os.environ.get(params.THREADS_ENV, "0")) or None
            self.model = LoadedModel(Path(model_dir or "."), threads)

    def transform(self, data, context) -> list[bytes]:
        assert self.model is not None
        responses: list[bytes] = [b""] * len(data)
        accepted: list[tuple[int, ResponseOptions, int, int]] = []
        images: list = []
        for idx, request in enumerate(data):
            headers = _headers(context, idx)
            try:
                options = response_options(
                    headers.get("accept"), headers.get(params.CUSTOM_ATTRIBUTES_HEADER.lower()), len(self.model.classes)
                )
                decoded = decode_request(_body(request), headers.get("content-type"))
            except RequestError as exc:
                responses[idx] = self._fail(context, idx, exc.status, exc.message)
                continue
            accepted.append((idx, options, len(images), len(images) + len(decoded)))
            images += decoded
        log.info("event=batch requests=%d accepted=%d images=%d", len(data), len(accepted), len(images))
        if not accepted:
            return responses
        try:
            probabilities = self.model.predict(images)
        except Exception as exc:
            log.exception("event=predict_failed")
            for idx, *_ in accepted:
                responses[idx] = self._fail(context, idx, 500, f"inference failed: {type(exc).__name__}")
            return responses
        for idx, options, start, stop in accepted:
            body, content_type = encode_predictions(probabilities[start:stop], self.model.classes, options)
            responses[idx] = body
            context.set_response_content_type(idx, content_type)
            context.set_response_status(200, "OK", idx)
        return responses

    @staticmethod
    def _fail(context, idx: int, status: int, message: str) -> bytes:
        context.set_response_status(status, message, idx)
        context.set_response_content_type(idx, "application/json")
        return error_body(message)
