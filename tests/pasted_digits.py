"""Digits pasted at a random place on a blank canvas: images whose evidence is known to lie in one box.

A model trained on them can only classify by looking at the digit (the rest is black), so a
faithful heatmap for the predicted class peaks inside the pasted box. ``boxes.json`` holds each
test image's box in canvas pixels ``[left, top, right, bottom)``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

BOXES_FILE = "boxes.json"


def write_pasted_digits(
    dest: Path, *, canvas: int, digit: int, margin: int, per_class: dict[str, int], seed: int = 0, classes: int = 10
) -> Path:
    """``dest/<split>/digit_<d>/<n>.png``; ``per_class``: images per class of each split; the digit
    (8x8 scans scaled to ``digit`` px) stays ``margin`` px inside the canvas (the eval crop keeps it)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(digits.target))
    by_class = {d: [i for i in order if digits.target[i] == d] for d in range(classes)}
    boxes: dict[str, list[int]] = {}
    used = 0
    for split, count in per_class.items():
        for d in range(classes):
            folder = dest / split / f"digit_{d}"
            folder.mkdir(parents=True, exist_ok=True)
            for n, index in enumerate(by_class[d][used : used + count]):
                scan = Image.fromarray((digits.images[index] * (255 / 16)).astype(np.uint8)).resize((digit, digit), Image.BILINEAR)
                left, top = (int(v) for v in rng.integers(margin, canvas - margin - digit + 1, size=2))
                image = Image.new("L", (canvas, canvas))
                image.paste(scan, (left, top))
                name = f"{split}/digit_{d}/{n:03d}.png"
                image.convert("RGB").save(dest / name)
                boxes[name] = [left, top, left + digit, top + digit]
        used += count
    (dest / BOXES_FILE).write_text(json.dumps(boxes))
    return dest


def boxes(dest: Path) -> dict[str, list[int]]:
    return json.loads((dest / BOXES_FILE).read_text())
