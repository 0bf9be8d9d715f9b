"""The ``serve`` console script: check the artifact, start MMS, load the model, run the front.

    SAGEMAKER_BASE_DIR=local/opt_ml serve          # what `docker run IMAGE serve` runs
    SAGEMAKER_MULTI_MODEL=true serve               # multi-model endpoint: models loaded on demand

SIGTERM (SageMaker sends SIGKILL 30 s later) stops accepting, stops MMS and every worker
(its whole process group), removes the temporary folder and exits 0.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
from aiohttp import web

from image_classifier import gpu_host, params
from image_classifier.errors import UserError
from image_classifier.logs import setup_logging
from image_classifier.serving.codec import USER_CODE_NOT_EXPLAINED
from image_classifier.serving.config import ServingConfig
from image_classifier.serving.front import Front
from image_classifier.serving.mms import ModelServer, error_message, link_into_store, register_query
from image_classifier.serving.user_code import prepare

log = logging.getLogger("image_classifier.serve")


async def wait_for_mms(front: Front, server: ModelServer, timeout: float = 120.0) -> None:
    assert front.session is not None
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        if not server.alive():
            raise UserError("multi-model-server exited during start-up; see its log above")
        try:
            async with front.session.get(front.mms("/models", management=True)) as response:
                if response.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.05)  # every 50 ms: the model's registration (and its worker's start) waits on this
    raise UserError(f"multi-model-server did not answer within {timeout:.0f}s")


async def register_single_model(front: Front, config: ServingConfig) -> None:
    assert front.session is not None
    entry = link_into_store(front.model_store, params.SINGLE_MODEL_NAME, str(config.model_dir))
    query = register_query(config, params.SINGLE_MODEL_NAME, entry)
    timeout = aiohttp.ClientTimeout(total=max(300, config.timeout_seconds))
    asked = time.monotonic()
    async with front.session.post(front.mms(f"/models?{query}", management=True), timeout=timeout) as response:
        if response.status != 200:
            hint = " (its own code failed: see event=user_code_failed above)" if params.SINGLE_MODEL_NAME in front.user_code else ""
            raise UserError(
                f"the model failed to load in multi-model-server: {error_message(await response.read(), response.reason or '')}{hint}"
            )
    front.loaded_ok = True
    front.model_loaded(params.SINGLE_MODEL_NAME, time.monotonic() - asked)
    log.info("event=ready port=%d workers=%d batch_size=%d", config.port, config.workers, config.batch_size)


async def serve(config: ServingConfig, user_code: bool = False) -> int:
    """``user_code``: the single model is served by its own code/inference.py (``user_code``)."""
    workdir = Path(tempfile.mkdtemp(prefix="serve-"))
    server = ModelServer(config, workdir)
    front = Front(config, workdir / "model-store")
    if user_code:
        front.user_code.add(params.SINGLE_MODEL_NAME)
    app = front.app()
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    code = 0
    try:
        server.start()
        await runner.setup()
        site = web.TCPSite(runner, host="0.0.0.0", port=config.port, reuse_address=True)
        await site.start()
        log.info("event=listening port=%d multi_model=%s", config.port, config.multi_model)
        await wait_for_mms(front, server)
        if not config.multi_model:
            loading = asyncio.create_task(register_single_model(front, config))
            done, _ = await asyncio.wait({loading, asyncio.create_task(stop.wait())}, return_when=asyncio.FIRST_COMPLETED)
            if loading in done:
                loading.result()
        while not stop.is_set():
            if not server.alive():
                raise UserError("multi-model-server exited unexpectedly")
            try:
                await asyncio.wait_for(stop.wait(), timeout=1.0)
            except TimeoutError:
                pass
        log.info("event=shutdown reason=signal")
    except UserError as exc:
        log.error("event=serve_failed reason=%s", str(exc).replace(" ", "_"))
        code = 1
    finally:
        await runner.cleanup()
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    return code


def refuse_unusable_gpu() -> None:
    """A serving container is not told its instance type: visible NVIDIA devices say a GPU is expected.

    Checked here from the driver alone (no torch in this process); the workers check CUDA itself."""
    facts = gpu_host.read_host()
    decision = gpu_host.decide(facts)
    expected = gpu_host.gpu_expected(facts, {})
    if decision.mode == "unusable" and (reason := gpu_host.cuda_refusal(expected, False, facts, os.environ)):
        raise UserError(reason)


def cli() -> None:
    setup_logging()
    code = None
    try:
        config = ServingConfig.from_env()
        refuse_unusable_gpu()
        if not config.multi_model:
            code = prepare(config.model_dir, os.environ, multi_model=False)
            if code is not None and config.explain:
                raise UserError(f"{params.EXPLAIN_ENV}={config.explain} but {USER_CODE_NOT_EXPLAINED}")
    except UserError as exc:
        log.error("event=serve_failed reason=%s", str(exc).replace(" ", "_"))
        sys.exit(1)
    sys.exit(asyncio.run(serve(config, user_code=code is not None)))


if __name__ == "__main__":
    cli()
