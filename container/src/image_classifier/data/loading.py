"""Decode any image Pillow reads into an upright RGB picture, or say why it cannot.

Handles what real photo folders contain: EXIF rotation, PNG/WebP with alpha (composited on
white, not on black as a bare ``convert('RGB')`` does), palette images, grayscale, 16-bit,
and CMYK JPEGs. Truncated files raise instead of being padded with grey.
"""

from __future__ import annotations

import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import BinaryIO

from PIL import Image, ImageFile, ImageOps

from image_classifier.progress import Progress

ImageFile.LOAD_TRUNCATED_IMAGES = False


class UnreadableImage(Exception):
    """The file exists but is not a decodable image."""


def to_rgb(image: Image.Image) -> Image.Image:
    """Upright RGB; transparency composited over white."""
    image = ImageOps.exif_transpose(image) or image
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        image = image.point(lambda v: v * (1 / 256)).convert("L")
    return image.convert("RGB") if image.mode != "RGB" else image


def load_rgb(path: Path | str | BinaryIO, draft_size: tuple[int, int] | None = None) -> Image.Image:
    """Decode ``path`` (or the bytes of a file object) fully. ``draft_size`` lets JPEG decode at a reduced scale (much faster)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                if draft_size is not None and image.format == "JPEG":
                    image.draft("RGB", draft_size)
                image.load()
                return to_rgb(image)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise UnreadableImage(f"{path}: {exc}") from exc


def _check(path: Path) -> str | None:
    try:
        load_rgb(path, draft_size=(64, 64))
    except UnreadableImage as exc:
        return str(exc)
    return None


def find_unreadable(paths: list[Path], workers: int = 4) -> dict[Path, str]:
    """Fully decode every file (reduced-scale for JPEG) and return the ones that fail, with why (progress as it goes)."""
    found: dict[Path, str] = {}
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool, Progress("image_check", total=len(paths), unit="images") as progress:
        for path, reason in zip(paths, pool.map(_check, paths, chunksize=64), strict=True):
            progress.update(1)
            if reason is not None:
                found[path] = reason
    return found
