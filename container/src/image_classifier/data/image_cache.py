"""Decoded, resized images kept between epochs: in memory, or in a memory-mapped file on disk.

Decoding a photo and resizing it is the costly part of the input pipeline, and every epoch repeats
it for the same result. The cache decodes each image once (threads: Pillow and torch release the GIL),
applies the transform's deterministic first steps (to a uint8 tensor, resize of the shorter side,
exactly as the transform does) and keeps the uint8 pixels. Loader workers read them (forked workers share the pages).

- ``augment=none`` / ``light`` (and validation): the transform's first step is that resize, so a
  cached image goes through the rest of the transform bit-identically to a freshly decoded one.
- ``augment=standard`` (random resized crop of the original): the cache keeps a larger image (shorter
  side ``input_size / sqrt(min crop scale)``), so crops are cut from it, at the resolution they end at.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import psutil
import torch
from PIL import Image
from torch.utils.data import Dataset

from image_classifier import params
from image_classifier.data.datasets import seeded
from image_classifier.data.loading import UnreadableImage, load_rgb
from image_classifier.data.presets import STANDARD_MIN_SCALE, DataConfig, resize_shorter, to_pixels
from image_classifier.errors import UserError
from image_classifier.metrics import format_line

log = logging.getLogger(__name__)
MEMORY_SHARE = 0.25  # of available RAM, for auto
DISK_SHARE = 0.5  # of free disk, for auto


def cached_side(config: DataConfig, augment: str) -> int:
    """The shorter side images are kept at."""
    if augment == "standard":
        return max(config.resize_size, math.ceil(config.input_size / math.sqrt(STANDARD_MIN_SCALE)))
    return config.resize_size


def estimate_bytes(paths: Sequence[Path], side: int, probe: int = 32) -> int:
    """Pixels at ``side`` for every image, from the aspect ratio of a few headers (no decoding)."""
    step = max(1, len(paths) // probe)
    ratios = []
    for path in list(paths)[::step][:probe]:
        try:
            with Image.open(path) as image:
                ratios.append(max(image.size) / max(1, min(image.size)))
        except OSError:
            continue
    ratio = sum(ratios) / len(ratios) if ratios else 4 / 3
    return int(len(paths) * 3 * side * side * ratio)


def cache_dir() -> Path:
    return Path(os.environ.get(params.CACHE_DIR_ENV) or tempfile.gettempdir())


@dataclass(frozen=True)
class Plan:
    mode: str  # none | memory | disk
    reason: str


def plan(requested: str, needed: int, *, feature_cache: bool, epochs_left: int) -> Plan:
    """Where the decoded images go; ``needed`` bytes for every split cached by this host."""
    available = psutil.virtual_memory().available
    directory = cache_dir()
    free_disk = shutil.disk_usage(directory).free if directory.is_dir() else 0
    if requested == "none":
        return Plan("none", "cache_images_none")
    if requested == "memory":
        if needed > 0.8 * available:
            raise UserError(f"cache_images=memory needs about {needed / 2**30:.1f} GiB and {available / 2**30:.1f} GiB are free; use disk")
        return Plan("memory", "requested")
    if requested == "disk":
        if needed > 0.9 * free_disk:
            raise UserError(f"cache_images=disk needs about {needed / 2**30:.1f} GiB in {directory}, {free_disk / 2**30:.1f} GiB are free")
        return Plan("disk", "requested")
    if feature_cache:
        return Plan("none", "feature_cache_runs")
    if epochs_left <= 1:
        return Plan("none", "one_epoch")
    if needed <= MEMORY_SHARE * available:
        return Plan("memory", "fits_in_memory")
    if needed <= DISK_SHARE * free_disk:
        return Plan("disk", "fits_on_disk")
    return Plan("none", "too_large")


class DecodedImages:
    """uint8 HWC images in one flat buffer (RAM or a memory-mapped file); a missing one is unreadable."""

    def __init__(self, buffer: np.ndarray, shapes: list[tuple[int, int] | None], offsets: list[int]):
        self.buffer, self.shapes, self.offsets = buffer, shapes, offsets

    def __len__(self) -> int:
        return len(self.shapes)

    def get(self, index: int) -> torch.Tensor | None:
        """CHW uint8 tensor (a view of the cache), or None for an image that did not decode."""
        shape = self.shapes[index]
        if shape is None:
            return None
        h, w = shape
        start = self.offsets[index]
        pixels = np.asarray(self.buffer[start : start + h * w * 3]).reshape(h, w, 3)
        return torch.from_numpy(pixels).permute(2, 0, 1)

    @property
    def nbytes(self) -> int:
        return int(self.buffer.nbytes)


def _decode(path: Path, resize: Callable, draft: tuple[int, int]) -> np.ndarray | None:
    try:
        return np.ascontiguousarray(resize(to_pixels(load_rgb(path, draft))).permute(1, 2, 0).numpy())
    except UnreadableImage:
        return None


def build(paths: Sequence[Path], config: DataConfig, side: int, mode: str, threads: int, directory: Path | None = None) -> DecodedImages:
    """Decode and resize every image once; ``mode`` is ``memory`` or ``disk`` (under ``directory``)."""
    resize = resize_shorter(config, side)
    arrays: list[np.ndarray | None] = [None] * len(paths)
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        for i, array in enumerate(pool.map(lambda p: _decode(p, resize, (side, side)), paths)):
            arrays[i] = array
    shapes = [None if a is None else (a.shape[0], a.shape[1]) for a in arrays]
    sizes = [0 if a is None else a.size for a in arrays]
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64).tolist()
    total = max(1, offsets[-1])
    if mode == "disk":
        folder = Path(tempfile.mkdtemp(prefix="image-cache-", dir=directory or cache_dir()))
        buffer: np.ndarray = np.lib.format.open_memmap(folder / "images.npy", mode="w+", dtype=np.uint8, shape=(total,))
    else:
        buffer = np.empty(total, dtype=np.uint8)
    for i, array in enumerate(arrays):
        if array is not None:
            buffer[offsets[i] : offsets[i + 1]] = array.reshape(-1)
        arrays[i] = None  # free as we go: the peak stays near one copy
    if mode == "disk":
        buffer.flush()  # type: ignore[attr-defined]
        buffer = np.load(folder / "images.npy", mmap_mode="c")  # copy-on-write: torch wants writable arrays; nothing writes
        shutil.rmtree(folder)  # the mapping (and forked workers' copies of it) outlive the name; the space is freed on exit
    return DecodedImages(buffer, shapes, offsets[:-1])


class CachedImages(Dataset):
    """``LabelledImages`` over a cache: same items (a ``(index, seed)`` key seeds augmentation)."""

    def __init__(self, images: DecodedImages, labels: Sequence[int], transform: Callable):
        self.images, self.labels, self.transform = images, list(labels), transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, key: int | tuple[int, int]):
        index, seed = key if isinstance(key, tuple) else (key, None)
        image = self.images.get(index)
        if image is None:
            return None
        if seed is None:
            return self.transform(image), self.labels[index]
        with seeded(seed):
            return self.transform(image), self.labels[index]


def log_built(split: str, images: DecodedImages, mode: str, seconds: float) -> None:
    log.info(format_line("image_cache_built", split=split, mode=mode, images=len(images), megabytes=images.nbytes / 2**20, seconds=seconds))


def timed_build(*args, **kwargs) -> tuple[DecodedImages, float]:
    started = time.perf_counter()
    return build(*args, **kwargs), time.perf_counter() - started
