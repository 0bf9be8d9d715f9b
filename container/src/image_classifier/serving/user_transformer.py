"""A model's own inference code, run by sagemaker-inference's ``Transformer``; ours for what it leaves out.

The toolkit picks ``model_fn``, ``input_fn``, ``predict_fn`` and ``output_fn`` (or ``transform_fn``,
``pre_model_fn``, ``model_warmup_fn``) from the user's module, passes ``context`` to those that take it,
and falls back to a default handler for the rest: ours, ``ClassifierFunctions``. So an ``output_fn``
alone reshapes our predictions, and a ``model_fn`` alone serves another network behind our image
decoding (an ``nn.Module`` runs as in AWS's PyTorch container: the input through the module).

One thing differs from the toolkit: it answers a failure with the traceback in plain text (and a
reason phrase MMS cannot always encode). Here a failure is a JSON ``{"error"}`` that names the
function, with the status a ``BaseInferenceToolkitError`` carries (else 500); the traceback goes to
the log, and the worker serves on.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
from PIL import Image
from sagemaker_inference.default_inference_handler import DefaultInferenceHandler
from sagemaker_inference.errors import BaseInferenceToolkitError, UnsupportedFormatError
from sagemaker_inference.transformer import Transformer

from image_classifier import params
from image_classifier.serving.codec import (
    JSON_TYPE,
    USER_CODE_NOT_EXPLAINED,
    RequestError,
    decode_request,
    encode_predictions,
    error_body,
    response_options,
)
from image_classifier.serving.model import LoadedModel

log = logging.getLogger(__name__)


class FunctionError(BaseInferenceToolkitError):
    """A handler function failed: the status and a message that names it."""

    def __init__(self, status: int, message: str):
        super().__init__(status, message, "error")  # MMS writes the phrase's characters as its bytes: keep it ASCII


def _attributes(context) -> str | None:
    """The request's ``X-Amzn-SageMaker-Custom-Attributes`` (top_k, probabilities)."""
    try:
        headers = context.request_processor[0].get_request_properties() or {}
    except (AttributeError, IndexError, TypeError):
        return None
    wanted = params.CUSTOM_ATTRIBUTES_HEADER.lower()
    return next((str(v) for k, v in headers.items() if str(k).lower() == wanted), None)


class ClassifierFunctions(DefaultInferenceHandler):
    """Our model_fn, input_fn, predict_fn and output_fn, for those the user's module does not define."""

    def default_model_fn(self, model_dir, context=None):
        return LoadedModel(Path(model_dir), int(os.environ.get(params.THREADS_ENV, "0")) or None)

    def default_input_fn(self, input_data, content_type, context=None):
        """Images (raw, or JSON ``{"instances": [{"b64": ...}]}``) decoded to RGB; other types need the user's input_fn."""
        body = input_data.encode() if isinstance(input_data, str) else bytes(input_data or b"")
        return decode_request(body, content_type)

    def default_predict_fn(self, data, model, context=None):
        if isinstance(model, LoadedModel):
            if isinstance(data, torch.Tensor):
                probabilities = model.predict_tensors(list(data))
            elif isinstance(data, list) and all(isinstance(image, Image.Image) for image in data):
                probabilities = model.predict(data)
            else:
                raise TypeError(f"the model card's model takes images or a prepared tensor, not {type(data).__name__}")
            return {"classes": model.classes, "probabilities": probabilities}
        if isinstance(model, torch.nn.Module):
            device = next(model.parameters(), torch.empty(0)).device
            with torch.inference_mode():
                return model(data.to(device) if isinstance(data, torch.Tensor) else data)
        raise TypeError(f"no default predict_fn for a {type(model).__name__}: define predict_fn")

    def default_output_fn(self, prediction, accept, context=None):
        if isinstance(prediction, dict) and {"classes", "probabilities"} <= set(prediction):
            options = response_options(accept, _attributes(context), len(prediction["classes"]))
            if options.explanation:  # the front refuses these first; a model's own code may call ours directly
                raise RequestError(400, USER_CODE_NOT_EXPLAINED)
            return encode_predictions(prediction["probabilities"], prediction["classes"], options)
        if isinstance(prediction, torch.Tensor):
            prediction = prediction.detach().cpu().numpy()
        try:
            return super().default_output_fn(prediction, accept)  # the toolkit's encoders: JSON, CSV, NPY
        except UnsupportedFormatError:
            raise RequestError(406, f"unsupported accept type {accept!r} for this prediction") from None


class UserCodeTransformer(Transformer):
    def __init__(self) -> None:
        super().__init__(default_inference_handler=ClassifierFunctions())

    def _validate_user_module_and_set_functions(self):
        try:
            super()._validate_user_module_and_set_functions()  # imports the user's module
        except (Exception, SystemExit) as exc:
            log.exception("event=user_code_failed function=import error=%s", type(exc).__name__)
            raise FunctionError(500, f"importing the model's code raised {type(exc).__name__}: {exc}"[:1000]) from exc

    def _run_handler_function(self, func, *argv):
        name = func.__name__.removeprefix("_").removeprefix("default_")
        if getattr(func, "__self__", None) is not None:
            name += " (the image's default)"
        try:
            return super()._run_handler_function(func, *argv)
        except FunctionError:
            raise  # a function called by the default transform_fn, already named
        except BaseInferenceToolkitError as exc:
            raise FunctionError(exc.status_code, f"{name}: {exc.message}") from exc
        except RequestError as exc:
            raise FunctionError(exc.status, f"{name}: {exc.message}") from exc
        except (Exception, SystemExit) as exc:  # user code must never take the worker down
            log.exception("event=user_code_failed function=%s error=%s", name.split()[0], type(exc).__name__)
            raise FunctionError(500, f"{name} raised {type(exc).__name__}: {exc}"[:1000]) from exc

    @staticmethod
    def handle_error(context, inference_exception, trace):
        if not isinstance(inference_exception, FunctionError):  # the toolkit's own steps around the functions
            log.error("event=user_code_failed function=transform trace=%s", trace.replace("\n", " | ")[-800:])
            if trace.rstrip().splitlines()[-1].startswith("UnicodeDecodeError"):  # it decodes JSON and CSV bodies
                inference_exception = FunctionError(400, "the body is not valid UTF-8 (text/csv and application/json are read as text)")
        context.set_response_status(code=inference_exception.status_code, phrase="error")
        context.set_response_content_type(0, JSON_TYPE)
        return [error_body(str(inference_exception.message))]
