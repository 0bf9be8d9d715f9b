"""SageMaker's multi-model protocol (``/models``: load, list, describe, unload), spoken to multi-model-server's
management API.

Apart from the request path (``front``): these handlers change which models exist, the front answers
requests for them. They share the front's state through ``FrontState`` (the HTTP session, the models
registered, the ones served by their own code), so neither module imports the other's class.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from pathlib import Path
from typing import Protocol
from urllib.parse import quote

import aiohttp
from aiohttp import web

from image_classifier import params
from image_classifier.errors import UserError
from image_classifier.serving.codec import USER_CODE_NOT_EXPLAINED, RequestError
from image_classifier.serving.config import ServingConfig
from image_classifier.serving.http_errors import json_error, path_text
from image_classifier.serving.mms import error_message, link_into_store, register_query
from image_classifier.serving.user_code import prepare

log = logging.getLogger(__name__)


class FrontState(Protocol):
    """What the handlers need of the front (``front.Front``)."""

    config: ServingConfig
    model_store: Path
    session: aiohttp.ClientSession | None
    user_code: set[str]
    loaded: set[str]

    def mms(self, path: str, management: bool = False) -> str: ...

    def model_loaded(self, name: str, seconds: float) -> None: ...


class ModelManagement:
    def __init__(self, front: FrontState):
        self.front = front

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/models", self.list_models),
            web.post("/models", self.load_model),
            web.get("/models/{name}", self.describe_model),
            web.delete("/models/{name}", self.unload_model),
        ]

    def _session(self) -> aiohttp.ClientSession:
        if not self.front.config.multi_model:
            raise RequestError(404, "model management is only available with SAGEMAKER_MULTI_MODEL=true")
        assert self.front.session is not None
        return self.front.session

    def _mms(self, name: str = "") -> str:
        return self.front.mms(f"/models/{quote(name, safe='')}" if name else "/models", management=True)

    async def load_model(self, request: web.Request) -> web.Response:
        session = self._session()
        try:
            document = await request.json()
            name, url = document["model_name"], document["url"]
        except (ValueError, KeyError, TypeError):
            raise RequestError(400, 'body must be JSON {"model_name": ..., "url": ...}') from None
        name, url = path_text(name, "model_name"), path_text(url, "url")
        async with session.get(self._mms(name)) as response:
            if response.status == 200:
                return json_error(409, f"model {name!r} is already loaded")
        if not Path(url).is_dir():
            return json_error(404, f"model {name!r}: {url} is not a folder")
        try:
            code = await asyncio.to_thread(prepare, Path(url), os.environ, True)
        except UserError as exc:
            return json_error(400, f"model {name!r} could not be loaded: {exc}")
        if code is not None and self.front.config.explain:
            return json_error(400, f"model {name!r} could not be loaded: {params.EXPLAIN_ENV} is set and {USER_CODE_NOT_EXPLAINED}")
        entry = link_into_store(self.front.model_store, name, url)
        asked = time.monotonic()
        async with session.post(self.front.mms(f"/models?{register_query(self.front.config, name, entry)}", management=True)) as response:
            payload = await response.read()
            if response.status == 200:
                self.front.user_code.discard(name)
                if code is not None:
                    self.front.user_code.add(name)
                self.front.model_loaded(name, time.monotonic() - asked)
                log.info("event=model_registered name=%s user_code=%s", name, str(code is not None).lower())
                return web.json_response({"status": f"model {name!r} loaded"})
            message = error_message(payload, "model could not be loaded")
            status = 507 if "memory" in message.lower() else 500 if response.status >= 500 else 400
            return json_error(status, f"model {name!r} could not be loaded: {message}")

    async def list_models(self, _request: web.Request) -> web.Response:
        async with self._session().get(self._mms()) as response:
            document = await response.json(content_type=None)
        models = [{"modelName": m.get("modelName"), "modelUrl": m.get("modelUrl")} for m in document.get("models", [])]
        return web.json_response({"models": models})

    async def describe_model(self, request: web.Request) -> web.Response:
        session = self._session()
        name = path_text(request.match_info["name"], "model name")
        async with session.get(self._mms(name)) as response:
            if response.status == 404:
                return json_error(404, f"model {name!r} is not loaded")
            document = await response.json(content_type=None)
        return web.json_response(document[0] if isinstance(document, list) and document else document)

    async def unload_model(self, request: web.Request) -> web.Response:
        session = self._session()
        name = path_text(request.match_info["name"], "model name")
        async with session.delete(self._mms(name)) as response:
            if response.status == 404:
                return json_error(404, f"model {name!r} is not loaded")
            if response.status != 200:
                return json_error(500, error_message(await response.read(), "unload failed"))
        self.front.user_code.discard(name)
        self.front.loaded.discard(name)
        log.info("event=model_unregistered name=%s", name)
        return web.json_response({"status": f"model {name!r} unloaded"})
