"""Train and evaluation transforms, driven by the model's own data config (timm's idea).

Normalisation, interpolation and crop percentage come from the backbone's pretrained config and
are written into the model card, so serving preprocesses exactly as training evaluated.
Augmentation is applied to the training split only.

Every transform turns the decoded picture into a uint8 tensor first and resizes, crops and
augments tensors: torch's antialiased resize of a 500x375 photo takes about 0.3 ms where Pillow's
takes 1.6 ms, and equals it within one grey level (``tests/unit/test_presets.py``); decode + resize
is 1.59 ms instead of 2.29 ms (``make bench-train``, ``local/bench/results/decode.md``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torchvision.transforms import InterpolationMode, v2

STANDARD_MIN_SCALE = 0.5  # smallest crop area of augment=standard's random resized crop


@dataclass(frozen=True)
class DataConfig:
    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str
    crop_pct: float

    def as_dict(self) -> dict:
        return asdict(self)

    @property
    def resize_size(self) -> int:
        return math.floor(self.input_size / self.crop_pct)


def _interp(name: str) -> InterpolationMode:
    return {"bicubic": InterpolationMode.BICUBIC, "nearest": InterpolationMode.NEAREST}.get(name, InterpolationMode.BILINEAR)


def _finish(config: DataConfig) -> list:
    return [v2.ToDtype(torch.float32, scale=True), v2.Normalize(config.mean, config.std)]


def to_pixels(image) -> torch.Tensor:
    """A decoded picture (Pillow image, HWC array or CHW tensor) as a uint8 CHW tensor."""
    return v2.functional.to_image(image)


def resize_shorter(config: DataConfig, side: int) -> v2.Resize:
    """The step after ``to_pixels`` in the eval and light transforms (and what the image cache stores)."""
    return v2.Resize(side, interpolation=_interp(config.interpolation), antialias=True)


def eval_transform(config: DataConfig) -> v2.Compose:
    return v2.Compose(
        [
            v2.ToImage(),
            resize_shorter(config, config.resize_size),
            v2.CenterCrop(config.input_size),
            *_finish(config),
        ]
    )


def train_transform(config: DataConfig, augment: str) -> v2.Compose:
    if augment == "none":
        return eval_transform(config)
    interp = _interp(config.interpolation)
    if augment == "light":
        head = [
            resize_shorter(config, config.resize_size),
            v2.RandomCrop(config.input_size),
            v2.RandomHorizontalFlip(),
        ]
    else:
        head = [
            v2.RandomResizedCrop(config.input_size, scale=(STANDARD_MIN_SCALE, 1.0), interpolation=interp, antialias=True),
            v2.RandomHorizontalFlip(),
            v2.ColorJitter(0.2, 0.2, 0.2),
        ]
    return v2.Compose([v2.ToImage(), *head, *_finish(config)])
