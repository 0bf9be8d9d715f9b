"""Per-request explanations: where the model looked for the predicted (or asked-for) class.

Why here and not SageMaker Clarify: Clarify is closed to new accounts. Why Captum: it is the
PyTorch team's attribution library, pure Python, and everything it needs (matplotlib, numpy,
tqdm, packaging) is already in the image, so it adds ~4 MB; its gradient attributions
(Integrated Gradients, saliency) work on any differentiable network, CNN or vision transformer,
and its Grad-CAM on any layer we point it at. pytorch-grad-cam would bring OpenCV and
scikit-learn; TorchCAM has CAM methods only.

The served runner may be a frozen TorchScript graph in bf16 that cannot give gradients; the
loaded model keeps the eager fp32 module beside it (``LoadedModel.model``), and explanations run
there, with gradients, only for the images that asked. Captum is imported on the first explained
request (or at load when ``IMAGE_CLASSIFIER_EXPLAIN`` is set), so a plain request never pays for it.

Methods (``params.EXPLAIN_METHODS``):
    gradcam               Grad-CAM on the feature map that enters the global pooling (CNNs).
    integrated_gradients  Integrated Gradients from a black image, positive evidence (any model).
    saliency              the largest absolute input gradient over the colour channels (any model).
    auto                  gradcam where the model has such a feature map, else integrated_gradients.

Each heatmap is scaled to [0, 1] (0 where the model found no evidence for the class).
"""

from __future__ import annotations

import base64
import io
import logging
from collections.abc import Callable, Sequence
from functools import cached_property

import numpy as np
import torch
from PIL import Image
from torch import nn

from image_classifier import params
from image_classifier.serving.codec import RequestError

log = logging.getLogger(__name__)
OVERLAY_ALPHA = 0.6  # the heatmap's opacity where it is 1; where it is 0 the image shows unchanged
OVERLAY_QUANTILE = 0.99  # shown at full colour from this quantile up (pixel methods have a few outliers)


def resolve_target(value: str | None, classes: Sequence[str]) -> int | None:
    """``explain_class``: a class label, else an index; None: the predicted class."""
    if value is None:
        return None
    if value in classes:
        return list(classes).index(value)
    try:
        index = int(value)
    except ValueError:
        index = -1
    if not 0 <= index < len(classes):
        raise RequestError(400, f"custom attribute explain_class={value!r} is neither a class label nor an index below {len(classes)}")
    return index


def pooled_feature_layer(model: nn.Module, example: torch.Tensor) -> nn.Module | None:
    """The module that pools the last spatial feature map to one vector, or None (a vision transformer).

    Grad-CAM is computed on that module's input. It is found by one probe forward: the last module
    (called once) whose input is ``(N, C, H, W)`` with ``H*W > 1`` and whose output is ``(N, C)`` or
    ``(N, C, 1, 1)``, the same ``C``. That is the global average pool of ResNets, EfficientNets,
    ConvNeXts, MobileNets (timm and torchvision); a transformer pools tokens without such a module.
    """
    calls: dict[nn.Module, int] = {}
    pools: list[nn.Module] = []

    def hook(module: nn.Module, inputs: tuple, output) -> None:
        calls[module] = calls.get(module, 0) + 1
        first = inputs[0] if inputs and isinstance(inputs[0], torch.Tensor) else None
        if first is None or not isinstance(output, torch.Tensor) or first.dim() != 4 or first.shape[2] * first.shape[3] <= 1:
            return
        channels = first.shape[1]
        if tuple(output.shape) in ((first.shape[0], channels), (first.shape[0], channels, 1, 1)):
            pools.append(module)

    handles = [m.register_forward_hook(hook) for m in model.modules() if m is not model]
    try:
        with torch.no_grad():
            model(example)
    finally:
        for handle in handles:
            handle.remove()
    candidates = [m for m in pools if calls[m] == 1]
    return candidates[-1] if candidates else None


class Explainer:
    """Heatmaps from the eager fp32 model (parameters frozen: only input gradients are computed)."""

    def __init__(
        self, model: nn.Module, mean: Sequence[float], std: Sequence[float], architecture: str, example: Callable[[], torch.Tensor]
    ):
        """``example``: a one-image input batch on the model's device, for the probe (made only if needed)."""
        self.model = model.requires_grad_(False)
        self.architecture = architecture
        self.mean = torch.tensor(mean).view(1, 3, 1, 1)
        self.std = torch.tensor(std).view(1, 3, 1, 1)
        self._example = example

    @cached_property
    def layer(self) -> nn.Module | None:
        """Grad-CAM's layer (``pooled_feature_layer``), found once."""
        found = pooled_feature_layer(self.model, self._example())
        log.info("event=explain_layer architecture=%s gradcam_layer=%s", self.architecture, type(found).__name__ if found else "none")
        return found

    def resolve(self, method: str) -> str:
        """The method that will run (``auto`` decided); a 400 where the model cannot take it."""
        if method == "auto":
            return "gradcam" if self.layer is not None else "integrated_gradients"
        if method == "gradcam" and self.layer is None:
            raise RequestError(
                400,
                f"explain=gradcam needs a convolutional feature map before a global pooling layer; {self.architecture} has none "
                "(a vision transformer): use explain=integrated_gradients or explain=saliency",
            )
        return method

    @cached_property
    def _colours(self) -> np.ndarray:
        from matplotlib import colormaps

        return (colormaps[params.EXPLAIN_COLORMAP](np.linspace(0, 1, 256))[:, :3] * 255).astype(np.float32)

    def heatmaps(self, method: str, batch: torch.Tensor, targets: list[int]) -> torch.Tensor:
        """``(N, H, W)`` in [0, 1] at the model's input size, for an fp32 NCHW batch on the model's device."""
        inputs = batch.detach().clone().requires_grad_()
        attributions = self._attribute(method, inputs, torch.tensor(targets, device=batch.device)).detach()
        flat = attributions.flatten(1)
        peak = flat.max(dim=1).values.clamp_min(torch.finfo(flat.dtype).tiny).view(-1, 1, 1)
        return (attributions / peak).clamp(0, 1)

    def _attribute(self, method: str, batch: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        from captum.attr import IntegratedGradients, LayerAttribution, LayerGradCam, Saliency

        with torch.enable_grad():
            if method == "gradcam":
                assert self.layer is not None, "resolve() refuses gradcam for this model"
                cam = LayerGradCam(self.model, self.layer).attribute(
                    batch, target=targets, attribute_to_layer_input=True, relu_attributions=True
                )
                return LayerAttribution.interpolate(cam, tuple(batch.shape[2:]), "bilinear")[:, 0]
            if method == "integrated_gradients":
                black = ((torch.zeros_like(self.mean) - self.mean) / self.std).to(batch.device).expand_as(batch).contiguous()
                ig = IntegratedGradients(self.model).attribute(
                    batch, baselines=black, target=targets, n_steps=params.EXPLAIN_IG_STEPS, internal_batch_size=params.EXPLAIN_IG_BATCH
                )
                return ig.sum(dim=1).clamp_min(0)
            if method == "saliency":
                return Saliency(self.model).attribute(batch, target=targets, abs=True).amax(dim=1)
        raise RequestError(400, f"unknown explanation method {method!r}")

    def overlay_png(self, image: torch.Tensor, heat: torch.Tensor) -> bytes:
        """The model's input crop (un-normalised) with the heatmap blended over it, as a PNG."""
        pixels = (image.detach().cpu().float() * self.std[0] + self.mean[0]).clamp(0, 1).permute(1, 2, 0).numpy() * 255
        heat = heat.detach().cpu().float()
        gain = float(torch.quantile(heat.flatten(), OVERLAY_QUANTILE))  # a few bright pixels must not hide the rest
        weights = (heat / gain).clamp(0, 1).numpy() if gain > 0 else heat.numpy()
        colour = self._colours[(weights * 255).round().astype(np.int64)]
        alpha = (OVERLAY_ALPHA * weights)[..., None]
        blended = (pixels * (1 - alpha) + colour * alpha).round().astype(np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(blended, "RGB").save(buffer, format="PNG")
        return buffer.getvalue()

    def explain(self, method: str, tensors: list[torch.Tensor], targets: list[int], device: torch.device) -> list[dict]:
        """One explanation per image: the method that ran, the target index, the grid and the overlay (base64 PNG)."""
        method = self.resolve(method)
        batch = torch.stack(tensors).to(device).contiguous(memory_format=torch.channels_last)
        heat = self.heatmaps(method, batch, targets)
        grids = torch.nn.functional.adaptive_avg_pool2d(heat[:, None], params.EXPLAIN_GRID)[:, 0]
        grids = grids / grids.flatten(1).max(dim=1).values.clamp_min(1e-12).view(-1, 1, 1)
        out = []
        for i in range(len(tensors)):
            out.append(
                {
                    "method": method,
                    "index": targets[i],
                    "grid": [[round(float(v), 3) for v in row] for row in grids[i].tolist()],
                    "overlay_png": base64.b64encode(self.overlay_png(batch[i], heat[i])).decode(),
                }
            )
        return out
