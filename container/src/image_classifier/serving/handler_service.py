"""The multi-model-server entry point: a sagemaker-inference handler service, one per worker (one model).

MMS refuses a handler module that defines more than one class, so this module holds only the
service. A model with its own ``code/inference.py`` is served by it through sagemaker-inference's
``Transformer`` (``user_transformer``); any other by ours (``transformer``: batching, errors; ``model``:
loading, inference). MMS calls ``handle(None, context)`` once when a worker loads the model: the
model is loaded and warmed up then, so a worker only reports ready once it can really answer.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from sagemaker_inference.default_handler_service import DefaultHandlerService

from image_classifier import params
from image_classifier.serving import user_code

if TYPE_CHECKING:
    from image_classifier.serving.transformer import BatchTransformer
    from image_classifier.serving.user_transformer import UserCodeTransformer


class HandlerService(DefaultHandlerService):
    _service: UserCodeTransformer | BatchTransformer

    def initialize(self, context) -> None:
        model_dir = Path(context.system_properties.get("model_dir") or ".")
        if user_code.find(model_dir, os.environ) is not None:
            from image_classifier.serving.user_transformer import UserCodeTransformer

            os.environ[params.USER_PROGRAM_ENV] = user_code.program(os.environ)  # the toolkit reads it; "" means the default
            sys.path.insert(0, str(model_dir / params.USER_CODE_DIR))  # this worker's model only
            self._service = UserCodeTransformer()
            super().initialize(context)  # the toolkit: code/ on PYTHONPATH for subprocesses, then model_fn
        else:
            started = time.perf_counter()
            from image_classifier.serving.transformer import BatchTransformer  # torch and the rest: most of a start

            logging.getLogger(__name__).info("event=worker_imports seconds=%.2f", time.perf_counter() - started)
            self._service = BatchTransformer()
            self._service.validate_and_initialize(model_dir=str(model_dir), context=context)
        self.initialized = True


_service = HandlerService()


def handle(data, context):
    if not getattr(_service, "initialized", False):
        _service.initialize(context)
    if data is None:
        return None
    return _service.handle(data, context)
