"""The data sets of the defaults benchmark (``quality_bench``): offline, each a train/validation/test tree.

They differ in size, resolution and distance from ImageNet, which is what decides how a
pretrained backbone should be fine-tuned:

- ``fashion_small``: Fashion-MNIST product photos (Debian ``dataset-fashion-mnist``), 50 per class,
  28 px grey; ``fashion_large`` 10,000 of them, 250 per class for training (the rest: validation, test);
- ``digits``: scikit-learn's 8x8 digit scans, written at 32 px;
- ``shapes``: generated, 64 px colour (trained at 48 px): eight kinds of shape at a random size, place, rotation and
  colour on a noisy background of another colour; nothing like a photo;
- ``textures``: generated, 64 px (trained at 32 px): eight procedural textures (oriented gratings, checkers, dots,
  noise of different spectra) under random phase, contrast and tint.

    python -m local.bench.quality_data --out local/data/quality      # every set (seconds)
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from local.sample_data import write_digits, write_fashion

SIZES = {  # images per class: train, validation, test
    "fashion_small": (50, 15, 50),
    "fashion_large": (250, 100, 650),  # 10,000 images, 2,500 of them for training
    "shapes": (40, 15, 40),
    "textures": (40, 15, 40),
}
GENERATED_SIDE = 64
SHAPES = ("circle", "square", "triangle", "star", "cross", "ring", "hexagon", "arrow")
TEXTURES = ("stripes_h", "stripes_d", "checker", "dots", "blobs", "fine_noise", "grid", "waves")


def _polygon(kind: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    def ring(points: int, radii: tuple[float, ...]) -> list[tuple[float, float]]:
        return [
            (
                cx + r * radii[i % len(radii)] * math.cos(angle + 2 * math.pi * i / points),
                cy + r * radii[i % len(radii)] * math.sin(angle + 2 * math.pi * i / points),
            )
            for i in range(points)
        ]

    if kind == "square":
        return ring(4, (1.0,))
    if kind == "triangle":
        return ring(3, (1.0,))
    if kind == "hexagon":
        return ring(6, (1.0,))
    if kind == "star":
        return ring(10, (1.0, 0.45))
    if kind == "cross":
        return ring(12, (1.0, 1.0, 0.42))
    # arrow: a shaft and a head, rotated
    body = [(-1.0, -0.25), (0.2, -0.25), (0.2, -0.6), (1.0, 0.0), (0.2, 0.6), (0.2, 0.25), (-1.0, 0.25)]
    c, s = math.cos(angle), math.sin(angle)
    return [(cx + r * (x * c - y * s), cy + r * (x * s + y * c)) for x, y in body]


def draw_shape(kind: str, rng: np.random.Generator, side: int = GENERATED_SIDE) -> Image.Image:
    background = rng.integers(0, 256, 3)
    noise = rng.normal(0, 18, (side, side, 3))
    image = Image.fromarray(np.clip(background + noise, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    colour = tuple(int(v) for v in (background + rng.integers(90, 166, 3)) % 256)
    r = rng.uniform(0.18, 0.38) * side
    cx, cy = rng.uniform(r, side - r, 2)
    angle = rng.uniform(0, 2 * math.pi)
    if kind in ("circle", "ring"):
        box = (cx - r, cy - r, cx + r, cy + r)
        draw.ellipse(box, fill=colour if kind == "circle" else None, outline=colour, width=max(2, int(r / 3)))
    else:
        draw.polygon(_polygon(kind, cx, cy, r, angle), fill=colour)
    return image


def draw_texture(kind: str, rng: np.random.Generator, side: int = GENERATED_SIDE) -> Image.Image:
    y, x = np.mgrid[0:side, 0:side].astype(np.float64) / side
    phase = rng.uniform(0, 2 * math.pi)
    f = rng.uniform(5, 9)
    if kind == "stripes_h":
        t = np.sin(2 * math.pi * f * y + phase)
    elif kind == "stripes_d":
        t = np.sin(2 * math.pi * f * (x + y) / math.sqrt(2) + phase)
    elif kind == "checker":
        t = np.sign(np.sin(2 * math.pi * f / 2 * x + phase) * np.sin(2 * math.pi * f / 2 * y + phase))
    elif kind == "dots":
        t = (np.cos(2 * math.pi * f * x + phase) + np.cos(2 * math.pi * f * y + phase) > 1.2).astype(float) * 2 - 1
    elif kind == "grid":
        t = ((np.abs(np.sin(2 * math.pi * f / 2 * x + phase)) < 0.2) | (np.abs(np.sin(2 * math.pi * f / 2 * y + phase)) < 0.2)) * 2.0 - 1
    elif kind == "waves":
        t = np.sin(2 * math.pi * f * y + 1.5 * np.sin(2 * math.pi * 2 * x + phase))
    else:  # noise: fine (white) or blobs (low-pass)
        noise = rng.normal(0, 1, (side, side))
        if kind == "blobs":
            spectrum = np.fft.fft2(noise)
            fy, fx = np.meshgrid(np.fft.fftfreq(side), np.fft.fftfreq(side), indexing="ij")
            noise = np.real(np.fft.ifft2(spectrum * np.exp(-((fx**2 + fy**2) / 0.003))))
        t = noise / (np.abs(noise).max() + 1e-9)
    contrast = rng.uniform(0.5, 1.0)
    tint = rng.uniform(0.3, 1.0, 3)
    base = rng.uniform(0.2, 0.6)
    rgb = np.clip((base + 0.35 * contrast * t)[..., None] * tint * 255 + rng.normal(0, 6, (side, side, 3)), 0, 255)
    return Image.fromarray(rgb.astype(np.uint8))


def write_generated(
    dest: Path, classes: tuple[str, ...], draw: Callable[[str, np.random.Generator], Image.Image], sizes, seed: int
) -> Path:
    rng = np.random.default_rng(seed)
    for split, per_class in zip(("train", "validation", "test"), sizes, strict=True):
        for kind in classes:
            folder = dest / split / kind
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                draw(kind, rng).save(folder / f"{i:04d}.png")
    return dest


def write_all(out: Path) -> dict[str, Path]:
    """Every data set under ``out`` (each written once; an existing one is kept)."""
    writers: dict[str, Callable[[Path], Path]] = {
        "fashion_small": lambda d: write_fashion(d, *SIZES["fashion_small"], seed=11),
        "fashion_large": lambda d: write_fashion(d, *SIZES["fashion_large"], seed=12),
        "digits": lambda d: write_digits(d, per_class_test=40, per_class_valid=20, size=32, seed=13),
        "shapes": lambda d: write_generated(d, SHAPES, draw_shape, SIZES["shapes"], seed=14),
        "textures": lambda d: write_generated(d, TEXTURES, draw_texture, SIZES["textures"], seed=15),
    }
    written = {}
    for name, write in writers.items():
        dest = out / name
        if not (dest / ".complete").exists():
            write(dest)
            (dest / ".complete").write_text("")
        written[name] = dest
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("local/data/quality"))
    for name, path in write_all(parser.parse_args().out).items():
        counts = {split: sum(1 for _ in (path / split).glob("*/*.png")) for split in ("train", "validation", "test")}
        print(name, path, counts)


if __name__ == "__main__":
    main()
