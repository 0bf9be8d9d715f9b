"""The public HTTP front on :8080: SageMaker's serving API, shaped errors, forwarding to MMS.

Why a front: MMS's own /ping answers 200 while its workers are dead, /execution-parameters is
not in the released wheel, and an oversized body gets a bare 413 before any handler runs. The
front owns those, refuses bad requests cheaply (size, content type, accept) before a worker
sees them, turns every error into JSON ``{"error": ...}`` with a real status, and speaks
SageMaker's multi-model protocol by translating it to MMS's management API.

Large requests (above the real-time 6 MB, up to ``SAGEMAKER_MAX_PAYLOAD_IN_MB``: asynchronous endpoints)
are never batched: each goes to a worker alone, and at most one per worker is read and in flight at
once (the rest wait unread), so the memory they take is bounded by the workers, not by the callers.
The front parses a request's Accept and Custom-Attributes once, into ``codec.ResponseOptions``, and
hands them to the worker in a header of its own (``codec.OPTIONS_HEADER``), so the worker does not
parse them again. The management handlers of the multi-model protocol live in ``management``.
The front also counts what it answers (``metrics``): EMF lines and ``GET /metrics``.

A model with its own inference code (``user_code``) takes another route: its own content types pass
through, one request at a time (its functions see one request each), never retried (its code may
have side effects); the size limit, /ping and JSON errors stay the front's.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from pathlib import Path
from urllib.parse import quote

import aiohttp
from aiohttp import web

from image_classifier import params
from image_classifier.serving.batching import ENVELOPE_TYPE, Answer, Batcher, split
from image_classifier.serving.codec import (
    IMAGE_TYPES,
    JSON_TYPE,
    OPTIONS_HEADER,
    USER_CODE_NOT_EXPLAINED,
    RequestError,
    ResponseOptions,
    explain_option,
    media_type,
    parse_custom_attributes,
    response_options,
)
from image_classifier.serving.config import ServingConfig
from image_classifier.serving.http_errors import json_error, path_text
from image_classifier.serving.management import ModelManagement
from image_classifier.serving.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from image_classifier.serving.metrics import OTHER_MODEL, Metrics
from image_classifier.serving.mms import describe_ready, error_message
from image_classifier.serving.timing import WORKER_HEADER, front_stages, now_ms, parse_worker_header, server_timing

log = logging.getLogger(__name__)
MODEL_KEY, STAGES_KEY, BYTES_KEY = "ic_model", "ic_stages", "ic_bytes"  # what the metrics read off a request
# a model with its own code reads the client's headers itself; ours get the parsed options instead
USER_CODE_HEADERS = ("Content-Type", "Accept", params.CUSTOM_ATTRIBUTES_HEADER)


class Front:
    def __init__(self, config: ServingConfig, model_store: Path):
        self.config = config
        self.model_store = model_store
        self.session: aiohttp.ClientSession | None = None
        self.loaded_ok = False  # single-model mode: set once MMS has loaded the model
        self._ping_cache: tuple[float, bool] = (0.0, False)
        self.batchers: dict[str, Batcher] = {}
        self.user_code: set[str] = set()  # models served by their own inference code
        self.loaded: set[str] = set()  # models registered with MMS: the only names that become metric labels
        self.metrics = Metrics(config) if config.metrics else None
        self.large_slots = asyncio.Semaphore(config.workers)  # large requests read and in flight at once

    # --- plumbing ------------------------------------------------------------------------
    async def start_session(self, _app=None) -> None:
        connector = aiohttp.TCPConnector(limit=256, force_close=False)
        timeout = aiohttp.ClientTimeout(total=self.config.timeout_seconds + 5)
        self.session = aiohttp.ClientSession(connector=connector, timeout=timeout)

        if self.metrics is not None:
            self.metrics.start()

    async def close_session(self, _app=None) -> None:
        if self.session is not None:
            await self.session.close()
        if self.metrics is not None:
            await self.metrics.stop()

    def model_loaded(self, name: str, seconds: float) -> None:
        """Registration returned: the model is loaded and warmed up in its workers, ``seconds`` after it was asked."""
        self.loaded.add(name)
        log.info("event=model_load_time model=%s seconds=%.2f", name, seconds)
        if self.metrics is not None:
            self.metrics.model_loaded(name, seconds)

    def mms(self, path: str, management: bool = False) -> str:
        port = self.config.mms_management_port if management else self.config.mms_port
        return f"http://127.0.0.1:{port}{path}"

    def app(self) -> web.Application:
        app = web.Application(client_max_size=self.config.max_payload_bytes, middlewares=[self.errors_as_json])
        app.on_startup.append(self.start_session)
        app.on_cleanup.append(self.close_session)
        app.add_routes(
            [
                web.get("/ping", self.ping),
                web.get("/execution-parameters", self.execution_parameters),
                web.get("/metrics", self.metrics_text),
                web.post("/invocations", self.invocations),
                *ModelManagement(self).routes(),
                web.post("/models/{name}/invoke", self.invoke_model),
            ]
        )
        return app

    @web.middleware
    async def errors_as_json(self, request: web.Request, handler):
        response = await self._answer(request, handler)
        if self.metrics is not None and MODEL_KEY in request:  # an inference request, answered
            model = request[MODEL_KEY] if request[MODEL_KEY] in self.loaded else OTHER_MODEL
            size = request.get(BYTES_KEY, request.content_length)
            self.metrics.observe(model, response.status, request.get(STAGES_KEY), size)
        return response

    async def _answer(self, request: web.Request, handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except web.HTTPRequestEntityTooLarge:
            return json_error(413, f"request body exceeds the {self.config.max_payload_mb} MB limit (SAGEMAKER_MAX_PAYLOAD_IN_MB)")
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            response = json_error(exc.status, exc.reason)
            if "Allow" in exc.headers:  # 405: which methods the route takes (RFC 9110)
                response.headers["Allow"] = exc.headers["Allow"]
            return response
        except RequestError as exc:
            return json_error(exc.status, exc.message)
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.warning("event=mms_unreachable error=%s", type(exc).__name__)
            return json_error(503, "model server unavailable")
        except Exception:
            log.exception("event=front_error path=%s", request.path)
            return json_error(500, "internal server error")

    # --- health and batch transform -------------------------------------------------------
    async def ping(self, _request: web.Request) -> web.Response:
        healthy = await self._healthy()
        if healthy:
            return web.json_response({"status": "healthy"})
        return json_error(503, "model not loaded" if not self.config.multi_model else "model server not ready")

    async def _healthy(self) -> bool:
        """MMS's answer, cached for 0.5 s; before the single model has loaded, no (nothing cached, so the
        first ping after the load says yes: a cached no held every start back by up to 0.5 s)."""
        if not self.config.multi_model and not self.loaded_ok:
            return False
        checked_at, cached = self._ping_cache
        if time.monotonic() - checked_at < 0.5:
            return cached
        assert self.session is not None
        try:
            if self.config.multi_model:
                async with self.session.get(self.mms("/ping")) as response:
                    healthy = response.status == 200
            else:
                async with self.session.get(self.mms(f"/models/{params.SINGLE_MODEL_NAME}", management=True)) as response:
                    healthy = response.status == 200 and describe_ready(await response.json(content_type=None))
        except (aiohttp.ClientError, TimeoutError, ValueError):
            healthy = False
        self._ping_cache = (time.monotonic(), healthy)
        return healthy

    async def execution_parameters(self, _request: web.Request) -> web.Response:
        return web.json_response(
            {
                "MaxConcurrentTransforms": self.config.max_concurrent_transforms,
                "BatchStrategy": "SINGLE_RECORD",  # one image file is one record
                "MaxPayloadInMB": self.config.max_payload_mb,
            }
        )

    async def metrics_text(self, _request: web.Request) -> web.Response:
        """The same numbers as the EMF lines, as Prometheus text (for a local scraper; SageMaker never calls it)."""
        if self.metrics is None:
            return json_error(404, f"metrics are off ({params.METRICS_ENV}=off)")
        return web.Response(body=self.metrics.exposition(), headers={"Content-Type": METRICS_CONTENT_TYPE})

    # --- inference -------------------------------------------------------------------------
    async def invocations(self, request: web.Request) -> web.Response:
        if self.config.multi_model:
            return json_error(404, "multi-model endpoint: invoke /models/<name>/invoke (TargetModel)")
        return await self._predict(request, params.SINGLE_MODEL_NAME)

    async def invoke_model(self, request: web.Request) -> web.Response:
        return await self._predict(request, path_text(request.match_info["name"], "model name"))

    async def _predict(self, request: web.Request, model: str) -> web.Response:
        request[MODEL_KEY] = model
        if model in self.user_code:
            return await self._predict_user_code(request, model)
        started = now_ms()
        options = self._check_request(request)
        large = self._large(request)
        async with self.large_slots if large else contextlib.nullcontext():
            body = await request.read()
            request[BYTES_KEY] = len(body)
            if not body:
                raise RequestError(400, "request body is empty")
            headers = {"Content-Type": request.headers["Content-Type"], OPTIONS_HEADER: options.to_header()}
            # an explained request goes to a worker alone: its seconds of gradients must not hold up a batch of
            # plain requests (nor push an envelope past the timeout); its images are bounded per request
            if self.config.batch_size > 1 and not large and options.explanation is None:
                answer = await self._batcher(model).submit(headers, body)
            else:
                answer = await self._forward(model, body, headers)
        return self._reply(request, model, answer, started)

    def _large(self, request: web.Request) -> bool:
        """Above the real-time limit, or of unknown length (chunked): goes alone, one per worker at a time."""
        length = request.content_length
        return length is None or length > self.config.batch_part_bytes

    def _reply(self, request: web.Request, model: str, answer: Answer, started: float) -> web.Response:
        """The worker's answer; a 200 with the request's ``Server-Timing`` (serving/timing.py), kept for the metrics."""
        if answer.status == 200:
            stages = front_stages(now_ms() - started, answer.queued_ms, answer.round_trip_ms, answer.worker_timing)
            request[STAGES_KEY] = stages
            return web.Response(
                body=answer.body, status=200, headers={"Content-Type": answer.content_type, "Server-Timing": server_timing(stages)}
            )
        if answer.status == 404:
            return json_error(404, f"model {model!r} is not loaded")
        return json_error(answer.status, error_message(answer.body, "model server error"))

    async def _predict_user_code(self, request: web.Request, model: str) -> web.Response:
        """The model's own input_fn/output_fn decide content types; the front keeps the size limit."""
        started = now_ms()
        self._check_size(request)
        if explain_option(parse_custom_attributes(request.headers.get(params.CUSTOM_ATTRIBUTES_HEADER))) is not None:
            raise RequestError(400, USER_CODE_NOT_EXPLAINED)
        async with self.large_slots if self._large(request) else contextlib.nullcontext():
            body = await request.read()
            request[BYTES_KEY] = len(body)
            if not body:
                raise RequestError(400, "request body is empty")
            headers = {h: request.headers[h] for h in USER_CODE_HEADERS if h in request.headers}
            answer = await self._forward(model, body, headers, attempts=1)
        return self._reply(request, model, answer, started)

    async def _forward(self, model: str, body: bytes, headers: dict[str, str], attempts: int = 2) -> Answer:
        """POST to MMS; a 5xx is retried once, after 0.1 s.

        Inference has no side effects, and a worker that dies (the OOM killer, a crash) fails the
        request it held with "Worker died." while the other workers serve on: the retry reaches one.
        """
        assert self.session is not None
        for attempt in range(attempts):
            sent = now_ms()
            async with self.session.post(self.mms(f"/predictions/{quote(model, safe='')}"), data=body, headers=headers) as response:
                content = await response.read()
                answer = Answer(
                    response.status,
                    response.headers.get("Content-Type", JSON_TYPE),
                    content,
                    parse_worker_header(response.headers.get(WORKER_HEADER)),
                    now_ms() - sent,
                )
            if answer.status < 500 or attempt == attempts - 1:
                break
            log.warning("event=mms_retry status=%d reason=%s", answer.status, error_message(answer.body, "").replace(" ", "_"))
            await asyncio.sleep(0.1)
        return answer

    async def _send_envelope(self, model: str, envelope: bytes) -> list[Answer]:
        return split(await self._forward(model, envelope, {"Content-Type": ENVELOPE_TYPE}))

    def _batcher(self, model: str) -> Batcher:
        if model not in self.batchers:
            self.batchers[model] = Batcher(
                functools.partial(self._send_envelope, model),
                self.config.batch_size,
                self.config.max_batch_delay_ms / 1000,
                max_in_flight=self.config.batches_in_flight,
            )
        return self.batchers[model]

    def _check_size(self, request: web.Request) -> None:
        length = request.content_length
        if length is not None and length > self.config.max_payload_bytes:
            raise web.HTTPRequestEntityTooLarge(max_size=self.config.max_payload_bytes, actual_size=length)

    def _check_request(self, request: web.Request) -> ResponseOptions:
        """Refuse before reading: oversized bodies, unsupported content types, accept types and custom attributes;
        the request's options, parsed once."""
        self._check_size(request)
        kind = media_type(request.headers.get("Content-Type"))
        if kind not in IMAGE_TYPES and kind != JSON_TYPE:
            raise RequestError(
                415,
                f"unsupported content type {request.headers.get('Content-Type')!r}; use image/jpeg, image/png, application/x-image or application/json",
            )
        return response_options(
            request.headers.get("Accept"), request.headers.get(params.CUSTOM_ATTRIBUTES_HEADER), default_explain=self.config.explain
        )
