"""Offline sample data sets written as class folders, in the SageMaker channel layout.

- ``fashion``: real Fashion-MNIST product photos from the Debian package
  ``dataset-fashion-mnist`` (train/validation from the official training split, disjoint;
  test from the official test split).
- ``digits``: scikit-learn's 1,797 digit scans, instant; for the fastest tests.
- ``builtin``: the sample baked into the compose image (Dockerfile target ``local``): a small
  Fashion-MNIST subset, EfficientNet-Lite0 ImageNet weights and the hyperparameters that fit them.

    python -m local.sample_data fashion --out local/data/fashion --train-per-class 300
    python -m local.sample_data builtin --out /opt/sample
"""

from __future__ import annotations

import argparse
import gzip
import json
import struct
from pathlib import Path

import numpy as np
from PIL import Image

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_CLASSES = ("t-shirt_top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle_boot")


def _read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as handle:
        data = handle.read()
    _, _, dims = struct.unpack(">HBB", data[:4])
    shape = struct.unpack(f">{dims}I", data[4 : 4 + 4 * dims])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


def load_fashion(split: str) -> tuple[np.ndarray, np.ndarray]:
    prefix = "train" if split == "train" else "t10k"
    if not (FASHION_DIR / f"{prefix}-images-idx3-ubyte.gz").exists():
        raise SystemExit(f"{FASHION_DIR} is missing: apt-get install dataset-fashion-mnist (make does it)")
    return _read_idx(FASHION_DIR / f"{prefix}-images-idx3-ubyte.gz"), _read_idx(FASHION_DIR / f"{prefix}-labels-idx1-ubyte.gz")


def _pick(labels: np.ndarray, per_class: int, rng: np.random.Generator, exclude: set[int] | None = None) -> list[int]:
    chosen: list[int] = []
    for label in range(int(labels.max()) + 1):
        pool = [int(i) for i in np.flatnonzero(labels == label) if not exclude or int(i) not in exclude]
        chosen += rng.choice(pool, size=min(per_class, len(pool)), replace=False).tolist()
    return chosen


def _write(
    images: np.ndarray, labels: np.ndarray, picks: list[int], classes: tuple[str, ...], root: Path, size: int | None, fmt: str
) -> None:
    for name in classes:
        (root / name).mkdir(parents=True, exist_ok=True)
    for i in picks:
        image = Image.fromarray(images[i])
        if size:
            image = image.resize((size, size), Image.BICUBIC)
        image.save(root / classes[int(labels[i])] / f"{i:05d}.{fmt}")


def write_fashion(
    dest: Path, train_per_class: int, valid_per_class: int, test_per_class: int, *, seed: int = 0, size: int | None = None, fmt: str = "png"
) -> Path:
    """Write ``dest/{train,validation,test}/<class>/*.png``; return ``dest``."""
    rng = np.random.default_rng(seed)
    images, labels = load_fashion("train")
    train = _pick(labels, train_per_class, rng)
    valid = _pick(labels, valid_per_class, rng, exclude=set(train))
    _write(images, labels, train, FASHION_CLASSES, dest / "train", size, fmt)
    _write(images, labels, valid, FASHION_CLASSES, dest / "validation", size, fmt)
    if test_per_class:
        test_images, test_labels = load_fashion("test")
        _write(test_images, test_labels, _pick(test_labels, test_per_class, rng), FASHION_CLASSES, dest / "test", size, fmt)
    return dest


def write_digits(
    dest: Path, *, classes: int = 10, per_class_test: int = 20, per_class_valid: int = 20, size: int = 32, seed: int = 0
) -> Path:
    """scikit-learn digits, 8x8 scaled up to ``size`` px, split train/validation/test."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = (digits.images * (255 / 16)).astype(np.uint8)
    labels = digits.target
    rng = np.random.default_rng(seed)
    keep = labels < classes
    images, labels = images[keep], labels[keep]
    names = tuple(f"digit_{d}" for d in range(classes))
    test = _pick(labels, per_class_test, rng)
    valid = _pick(labels, per_class_valid, rng, exclude=set(test))
    train = sorted(set(range(len(labels))) - set(test) - set(valid))
    for split, picks in (("train", train), ("validation", valid), ("test", test)):
        _write(images, labels, picks, names, dest / split, size, "png")
    return dest


# What `docker compose up` trains on a fresh clone: small enough for a CPU in well under a minute
# (3 epochs at 64 px); the learning rates and the rest are the trainer's rule (image_classifier/defaults.py).
BUILTIN_HYPERPARAMETERS = {
    "model": "tf_efficientnet_lite0",
    "pretrained": "true",
    "image_size": "64",
    "epochs": "3",
    "batch_size": "50",
    "log_interval": "5",
    "num_workers": "1",
}


BUILTIN_SIZES = {"train_per_class": 50, "valid_per_class": 15, "test_per_class": 20, "seed": 5}


def write_builtin(dest: Path) -> Path:
    """``dest/data/{train,validation,test}``, ``dest/pretrained/*.safetensors``, ``dest/hyperparameters.json``."""
    from local.convert_weights import MODEL, convert

    write_fashion(dest / "data", **BUILTIN_SIZES)
    convert(dest / "pretrained" / f"{MODEL}.safetensors")
    (dest / "hyperparameters.json").write_text(json.dumps(BUILTIN_HYPERPARAMETERS, indent=2) + "\n")
    return dest


def write_config(base: Path, hyperparameters: dict[str, object], channels: list[str], hosts: tuple[str, ...] = ("algo-1",)) -> Path:
    """Write /opt/ml/input/config as SageMaker does for a training job (every value a string)."""
    config = base / "input" / "config"
    config.mkdir(parents=True, exist_ok=True)
    (config / "hyperparameters.json").write_text(json.dumps({k: str(v) for k, v in hyperparameters.items()}, indent=2))
    described = {
        c: {"ContentType": "application/x-image", "TrainingInputMode": "File", "S3DistributionType": "FullyReplicated"} for c in channels
    }
    (config / "inputdataconfig.json").write_text(json.dumps(described, indent=2))
    (config / "resourceconfig.json").write_text(
        json.dumps({"current_host": hosts[0], "hosts": list(hosts), "network_interface_name": "eth0"})
    )
    return base


def write_job(base: Path, data: Path, hyperparameters: dict[str, object], hosts: tuple[str, ...] = ("algo-1",)) -> Path:
    """Lay out ``base`` like /opt/ml, each split folder of ``data`` linked in as a channel."""
    data_dir = base / "input" / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    splits = sorted(p.name for p in data.iterdir() if p.is_dir())
    for split in splits:
        link = data_dir / split
        if not link.exists():
            link.symlink_to(data / split, target_is_directory=True)
    return write_config(base, hyperparameters, splits, hosts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset", choices=("fashion", "digits", "builtin"))
    parser.add_argument("--out", type=Path, required=True, help="folder to write train/ validation/ test/ into")
    parser.add_argument("--train-per-class", type=int, default=300)
    parser.add_argument("--valid-per-class", type=int, default=50)
    parser.add_argument("--test-per-class", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.dataset == "builtin":
        write_builtin(args.out)
    elif args.dataset == "fashion":
        write_fashion(args.out, args.train_per_class, args.valid_per_class, args.test_per_class, seed=args.seed)
    else:
        write_digits(args.out, seed=args.seed)
    print(f"wrote {args.dataset} to {args.out}")


if __name__ == "__main__":
    main()
