"""The multi-model-server entry point: a sagemaker-inference handler service.

MMS refuses a handler module that defines more than one class, so this module holds only the
service; the work is in ``transformer`` (batching, errors) and ``model`` (loading, inference).
MMS calls ``handle(None, context)`` once when a worker loads the model: the model is loaded and
warmed up then, so a worker only reports ready once it can really answer.
"""

from __future__ import annotations

from sagemaker_inference.default_handler_service import DefaultHandlerService

from image_classifier.serving.transformer import BatchTransformer


class HandlerService(DefaultHandlerService):
    def __init__(self) -> None:
        super().__init__(transformer=BatchTransformer())

    def initialize(self, context) -> None:
        self._service.validate_and_initialize(model_dir=context.system_properties.get("model_dir"), context=context)
        self.initialized = True


_service = HandlerService()


def handle(data, context):
    if not getattr(_service, "initialized", False):
        _service.initialize(context)
    if data is None:
        return None
    return _service.handle(data, context)
