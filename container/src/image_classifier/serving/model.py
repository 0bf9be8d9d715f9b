"""Load a model artifact for inference, exactly as the model card describes it.

The card drives everything (architecture, classes, input size, normalisation). The weights'
sha256 is checked against the card before they are read, and only safetensors are read: a
corrupt, swapped or pickled artifact fails start-up with a reason, never half-loads.
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
import time
from functools import cached_property
from pathlib import Path

import torch
from PIL import Image
from safetensors.torch import load_file
from torch import nn

from image_classifier import gpu_host, params
from image_classifier.data.presets import DataConfig, eval_transform
from image_classifier.errors import UserError
from image_classifier.modeling.factory import build_architecture
from image_classifier.serving import fast_paths
from image_classifier.serving.artifact import check_artifact
from image_classifier.serving.explain import Explainer

log = logging.getLogger(__name__)
MAX_ASPECT = 4  # longer side at most 4x the shorter one before resizing (see ``centre_bounded``)
# calls of the chosen runner at load: TorchScript's profiling executor records the first call and
# optimises on the next, and oneDNN creates its kernels on first use; after these two a ResNet-50
# answers at its steady latency (the start-up benchmark's first request, docs/performance.md)
WARMUP_CALLS = 2


def serving_device() -> torch.device:
    """CUDA when usable; the CPU only where no GPU is expected or ``IMAGE_CLASSIFIER_ALLOW_CPU`` says so."""
    count, why_not = gpu_host.torch_cuda()
    if count:
        return torch.device("cuda")
    facts = gpu_host.read_host()
    if reason := gpu_host.cuda_refusal(gpu_host.gpu_expected(facts, {}), False, facts, os.environ, why_not):
        raise UserError(reason)
    return torch.device("cpu")


def with_weights(architecture: str, num_classes: int, weights: Path) -> nn.Module:
    """The network holding the artifact's weights.

    Built on the meta device and handed the file's tensors (``assign``): the random initialisation of
    a real build, and the copy of the weights over it, cost ResNet-50 0.9 s of a 2-core start. An
    architecture with state the file does not hold (a buffer computed in ``__init__``) or of another
    dtype is built for real."""
    state = load_file(str(weights))
    try:
        with torch.device("meta"):
            model = build_architecture(architecture, num_classes)
        expected = model.state_dict()
        model.load_state_dict(state, assign=True)
        if any(t.is_meta for t in itertools.chain(model.parameters(), model.buffers())) or any(
            state[k].dtype != v.dtype for k, v in expected.items() if k in state
        ):
            model = build_architecture(architecture, num_classes)
            model.load_state_dict(state)
    except RuntimeError as exc:
        raise UserError(f"weights do not fit {architecture}: {str(exc)[:300]}") from None
    return model


class LoadedModel:
    """``precision`` / ``graph``: auto (the rule of ``fast_paths``) unless given or set in the environment."""

    def __init__(
        self, model_dir: Path, threads: int | None = None, precision: str | None = None, graph: str | None = None, defer_graph: bool = False
    ):
        """``defer_graph``: a frozen graph chosen by the rule is built after load, in a thread, while the eager
        runner answers (the serving worker: /ping turns 200 that much sooner); ``graph_ready`` is set when done."""
        started = time.perf_counter()
        if threads:
            torch.set_num_threads(threads)
        self.card, weights = check_artifact(model_dir)
        model = with_weights(self.card.architecture, self.card.num_classes, weights)
        self.device = serving_device()
        self.model = model.eval().to(self.device).to(memory_format=torch.channels_last)
        self.classes = list(self.card.classes)
        self.temperature = self.card.temperature or 1.0  # fitted on validation; 1 for cards from before calibration
        data_config = DataConfig(**self.card.preprocessing.model_dump())
        self.transform = eval_transform(data_config)
        self.draft_size = data_config.resize_size  # JPEGs decode at reduced scale down to this, as in training
        size = self.card.preprocessing.input_size
        built = time.perf_counter()
        log.info("event=model_built architecture=%s seconds=%.2f", self.card.architecture, built - started)
        self.runner = fast_paths.choose(
            self.model,
            self._batch([self.prepare(Image.new("RGB", (size, size)))]),
            self._batch(list(torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0)))),  # bf16's probe
            precision or os.environ.get(params.PRECISION_ENV, "auto"),
            graph or os.environ.get(params.GRAPH_ENV, "auto"),
            defer_graph,
        )
        chosen = time.perf_counter()
        for _ in range(WARMUP_CALLS):
            self.predict([Image.new("RGB", (size, size))])
        log.info(
            "event=model_loaded architecture=%s classes=%d threads=%d device=%s precision=%s graph=%s "
            "graph_deferred=%s build_s=%.2f graph_s=%.2f warmup_s=%.2f seconds=%.2f",
            self.card.architecture,
            len(self.classes),
            torch.get_num_threads(),
            self.device.type,
            self.runner.precision,
            self.runner.graph,
            self.runner.deferred or "none",
            built - started,
            chosen - built,
            time.perf_counter() - chosen,
            time.perf_counter() - started,
        )
        self.graph_ready = threading.Event()
        if self.runner.deferred:
            example = self._batch([self.prepare(Image.new("RGB", (size, size)))])
            threading.Thread(target=self._build_graph, args=(example,), name="graph", daemon=True).start()
        else:
            self.graph_ready.set()

    @torch.inference_mode()
    def _build_graph(self, example: torch.Tensor) -> None:
        """The deferred graph, built and warmed up beside the requests, then swapped in (one attribute: atomic)."""
        started = time.perf_counter()
        try:
            runner = fast_paths.freeze(self.runner, example)
            for _ in range(WARMUP_CALLS):
                runner(example)
        except Exception as exc:  # noqa: BLE001 - an untraceable model stays eager
            log.warning("event=serve_graph_failed precision=%s error=%s deferred=true", self.runner.precision, type(exc).__name__)
        else:
            self.runner = runner
            log.info("event=graph_ready graph=%s precision=%s seconds=%.2f", runner.graph, runner.precision, time.perf_counter() - started)
        finally:
            self.graph_ready.set()

    def prepare(self, image: Image.Image) -> torch.Tensor:
        """One decoded image as the model's input tensor (resized, centre-cropped, normalised)."""
        return self.transform(centre_bounded(image))

    @torch.inference_mode()
    def predict_tensors(self, tensors: list[torch.Tensor]) -> list[list[float]]:
        """Calibrated class probabilities (softmax of logits / temperature) for each prepared image, as one batch."""
        return (self.runner(self._batch(tensors)) / self.temperature).softmax(dim=1).tolist()

    def _batch(self, tensors: list[torch.Tensor]) -> torch.Tensor:
        return torch.stack(tensors).to(self.device, non_blocking=True).contiguous(memory_format=torch.channels_last)

    def predict(self, images: list[Image.Image]) -> list[list[float]]:
        return self.predict_tensors([self.prepare(image) for image in images])

    @cached_property
    def explainer(self) -> Explainer:
        """Explanations run on ``self.model``, the eager fp32 module the runner was built from (it may be
        a frozen graph or a bf16 copy, without gradients)."""
        size = self.card.preprocessing.input_size
        preprocessing = self.card.preprocessing
        return Explainer(
            self.model,
            preprocessing.mean,
            preprocessing.std,
            self.card.architecture,
            lambda: self._batch([self.prepare(Image.new("RGB", (size, size)))]),
        )

    def explain(self, method: str, tensors: list[torch.Tensor], targets: list[int]) -> list[dict]:
        """One explanation per prepared image, for the class index in ``targets`` (``serving/explain.py``)."""
        return self.explainer.explain(method, tensors, targets, self.device)


def centre_bounded(image: Image.Image) -> Image.Image:
    """Crop a very long, narrow image to its centre 4:1 before the resize.

    The eval transform resizes the shorter side and keeps a centre square, so nothing outside
    the centre 4:1 region is ever used; resizing all of a 1 x 10,000,000 image first would
    need gigabytes (36 x 360,000,000 pixels) and kill the worker.
    """
    width, height = image.size
    if width > MAX_ASPECT * height:
        left = (width - MAX_ASPECT * height) // 2
        return image.crop((left, 0, left + MAX_ASPECT * height, height))
    if height > MAX_ASPECT * width:
        top = (height - MAX_ASPECT * width) // 2
        return image.crop((0, top, width, top + MAX_ASPECT * width))
    return image
