"""Create any timm model (or ``torchvision/<name>``) with pretrained weights and a new head."""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torchvision
from torch import nn

from image_classifier.data.presets import DataConfig
from image_classifier.errors import UserError
from image_classifier.modeling.pretrained import WeightSource, find_pretrained

log = logging.getLogger(__name__)

TORCHVISION_PREFIX = "torchvision/"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class BuiltModel:
    model: nn.Module
    data_config: DataConfig
    weights: WeightSource | None


def _timm():
    """timm, imported on first use: a serving worker of a torchvision model starts 0.3-0.6 s sooner without it
    (``local/bench/startup_bench.py``)."""
    import timm

    return timm


def is_torchvision(name: str) -> bool:
    return name.startswith(TORCHVISION_PREFIX)


def build_architecture(name: str, num_classes: int | None = None) -> nn.Module:
    """The bare network. ``num_classes=None`` keeps the original (ImageNet) head."""
    kwargs: dict[str, Any] = {} if num_classes is None else {"num_classes": num_classes}
    try:
        if is_torchvision(name):
            return torchvision.models.get_model(name[len(TORCHVISION_PREFIX) :], weights=None, **kwargs)
        return _timm().create_model(name, pretrained=False, **kwargs)
    except (RuntimeError, ValueError, KeyError) as exc:
        raise UserError(f"unknown model {name!r}: {exc}") from exc


def classifier_of(model: nn.Module) -> nn.Module:
    """The final classification layer (timm's ``get_classifier`` or torchvision's last Linear)."""
    if callable(getter := getattr(model, "get_classifier", None)):
        return getter()
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise UserError(f"cannot find a classification layer in {type(model).__name__}")
    return linears[-1]


def replace_head(model: nn.Module, num_classes: int) -> None:
    if callable(reset := getattr(model, "reset_classifier", None)):
        reset(num_classes)
        return
    old = classifier_of(model)
    assert isinstance(old, nn.Linear)
    for parent in model.modules():
        for child_name, child in parent.named_children():
            if child is old:
                setattr(parent, child_name, nn.Linear(old.in_features, num_classes, bias=old.bias is not None))
                return


def data_config_for(name: str, model: nn.Module, image_size: int | None) -> DataConfig:
    if is_torchvision(name):
        size, mean, std, interp, crop = 224, IMAGENET_MEAN, IMAGENET_STD, "bilinear", 0.875
    else:
        cfg = _timm().data.resolve_data_config({}, model=model)
        size, mean, std, interp, crop = cfg["input_size"][-1], cfg["mean"], cfg["std"], cfg["interpolation"], cfg["crop_pct"]
    return DataConfig(
        input_size=int(image_size or size),
        mean=(float(mean[0]), float(mean[1]), float(mean[2])),
        std=(float(std[0]), float(std[1]), float(std[2])),
        interpolation=str(interp),
        crop_pct=float(crop),
    )


def load_backbone_weights(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load every backbone tensor (shapes checked); head tensors may differ and are skipped."""
    head_keys = {f"{_module_path(model, classifier_of(model))}.{k}" for k in classifier_of(model).state_dict()}
    own = model.state_dict()
    filtered = _try_filter(model, state, own)
    missing = [k for k in own if k not in head_keys and k not in filtered]
    wrong = [k for k in own if k not in head_keys and k in filtered and filtered[k].shape != own[k].shape]
    if missing or wrong:
        detail = f"{len(missing)} missing (e.g. {missing[:3]})" if missing else f"{len(wrong)} of another shape (e.g. {wrong[:3]})"
        raise UserError(f"pretrained weights from {source} do not fit {type(model).__name__}: {detail}")
    usable = {k: v for k, v in filtered.items() if k in own and (k not in head_keys or v.shape == own[k].shape)}
    model.load_state_dict(usable, strict=False)
    log.info("event=pretrained_loaded source=%s tensors=%d", source, len(usable))


def _module_path(model: nn.Module, target: nn.Module) -> str:
    for name, module in model.named_modules():
        if module is target:
            return name
    raise UserError("classification layer is not part of the model")


def _try_filter(model: nn.Module, state: dict, own: dict) -> dict:
    """Apply timm's per-family key remapping (original-repo checkpoints) when keys do not match."""
    if all(k in state for k in own if not k.endswith("num_batches_tracked")):
        return state
    filter_fn = getattr(sys.modules.get(type(model).__module__), "checkpoint_filter_fn", None)
    if filter_fn is None:
        return state
    try:
        return filter_fn(state, model)
    except Exception:  # noqa: BLE001 - a failed remap falls back to the raw keys, reported below
        return state


def create_model(
    name: str,
    num_classes: int,
    *,
    pretrained: bool,
    image_size: int | None,
    pretrained_channel: Path | None,
) -> BuiltModel:
    model = build_architecture(name)
    source = None
    if pretrained:
        source = find_pretrained(name, model, pretrained_channel)
        load_backbone_weights(model, source.load(), source.describe())
    else:
        log.info("event=random_init model=%s", name)
    replace_head(model, num_classes)
    return BuiltModel(model, data_config_for(name, model, image_size), source)
