"""Turn channels into train/validation/test folders and index their classes.

Accepted layouts (the SageMaker channel contract):
- channels ``train``, ``validation`` (or ``valid``/``val``) and optional ``test``, each a folder
  with one sub-folder per class;
- one ``training`` channel holding ``train/``, ``valid/`` (or ``validation/``) and optional
  ``test/`` — the layout of the dog-breed zip.

Class index order is the sorted class-folder names, so it never depends on the file system.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from image_classifier import params
from image_classifier.data.samples import Samples
from image_classifier.errors import UserError


@dataclass(frozen=True)
class ImageFolderIndex:
    """The images of one split: ``samples`` are (path, class index) pairs in a stable order."""

    split: str
    root: Path
    classes: tuple[str, ...]
    samples: Samples
    ignored: tuple[Path, ...]  # files that are not images by extension (README, .DS_Store)

    def counts(self) -> dict[str, int]:
        per_label = np.bincount(self.samples.labels, minlength=len(self.classes))
        return {name: int(n) for name, n in zip(self.classes, per_label, strict=True)}


@dataclass(frozen=True)
class Splits:
    train: Path
    validation: Path
    test: Path | None


def image_extensions() -> frozenset[str]:
    """Every extension Pillow can open (JPEG, PNG, WebP, TIFF, BMP, GIF, ...)."""
    return frozenset(ext.lower() for ext in Image.registered_extensions())


def _first_existing(root: Path, names: tuple[str, ...]) -> Path | None:
    for name in names:
        if (root / name).is_dir():
            return root / name
    return None


def resolve_splits(channels: Mapping[str, Path]) -> Splits:
    """Find the train/validation/test folders in the channels; fail with the reason otherwise."""
    if params.TRAINING_CHANNEL in channels and params.TRAIN_CHANNEL not in channels:
        root = channels[params.TRAINING_CHANNEL]
        train = _first_existing(root, (params.TRAIN_CHANNEL,))
        valid = _first_existing(root, params.VALIDATION_ALIASES)
        if train is None or valid is None:
            raise UserError(
                f"channel '{params.TRAINING_CHANNEL}' must hold train/ and valid/ (or validation/) folders; "
                f"found {sorted(p.name for p in root.iterdir()) if root.is_dir() else 'nothing'}"
            )
        return Splits(train, valid, _first_existing(root, (params.TEST_CHANNEL,)))

    if params.TRAIN_CHANNEL not in channels:
        raise UserError(
            f"no '{params.TRAIN_CHANNEL}' channel (or '{params.TRAINING_CHANNEL}' with train/ valid/); "
            f"channels given: {sorted(channels) or 'none'}"
        )
    valid_name = next((n for n in params.VALIDATION_ALIASES if n in channels), None)
    if valid_name is None:
        raise UserError(f"no '{params.VALIDATION_CHANNEL}' channel; channels given: {sorted(channels)}")
    return Splits(channels[params.TRAIN_CHANNEL], channels[valid_name], channels.get(params.TEST_CHANNEL))


def index_split(split: str, root: Path) -> ImageFolderIndex:
    """Index one folder tree: sorted class folders, image files found recursively inside each."""
    if not root.is_dir():
        raise UserError(f"channel '{split}' is empty: {root} does not exist")
    classes = tuple(sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")))
    if not classes:
        raise UserError(f"channel '{split}' is empty: no class sub-folders in {root}")
    extensions = image_extensions()
    samples: list[tuple[Path, int]] = []
    ignored: list[Path] = []
    empty: list[str] = []
    for label, name in enumerate(classes):
        found = 0
        for dirpath, dirnames, filenames in os.walk(root / name, followlinks=True):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for filename in sorted(filenames):
                path = Path(dirpath, filename)
                if filename.startswith("."):
                    continue
                if path.suffix.lower() in extensions:
                    samples.append((path, label))
                    found += 1
                else:
                    ignored.append(path)
        if found == 0:
            empty.append(name)
    if empty:
        raise UserError(f"channel '{split}' has empty classes (no image files): {empty}")
    return ImageFolderIndex(split, root, classes, Samples(samples), tuple(ignored))


def check_same_classes(reference: ImageFolderIndex, *others: ImageFolderIndex) -> None:
    """Every split must carry exactly the training classes, or indices would mean different things."""
    for other in others:
        if other.classes != reference.classes:
            missing = sorted(set(reference.classes) - set(other.classes))
            extra = sorted(set(other.classes) - set(reference.classes))
            raise UserError(
                f"class sets differ between channels '{reference.split}' and '{other.split}': "
                f"missing from '{other.split}': {missing}; only in '{other.split}': {extra}"
            )
