"""Training and tuning benchmarks: our trainer beside the hand-written baseline, A/B interleaved.

    python -m local.bench.train_bench                    # decode + training + tuning, ~34 min on 2 quiet CPU cores
    python -m local.bench.train_bench --only tuning      # one part (decode | training | tuning)
    python -m local.bench.train_bench --gpu              # the GPU section (skipped, exit 0, without CUDA)

Writes ``local/bench/results/{decode,training,tuning}.{json,md}`` (``gpu_training`` with ``--gpu``).

Fixed inputs: the eight real colour photos bundled with scikit-image, one class each (astronaut,
chelsea, coffee, rocket, hubble_deep_field, immunohistochemistry, retina, stereo_motorcycle left
view). Each benchmark photo is a seeded random 4:3 crop of 35-100 % of the source's largest 4:3
area, flipped horizontally with probability 0.5, resized to 500x375 (Lanczos) and encoded as
JPEG quality 90: 64 per class for training (512) and 16 per class for validation (128), written
once into the temp folder (the recipe is the folder's name). The decode benchmark adds 16
photos at 2000x1500, quality 90 (a phone photo downscaled once), where JPEG draft mode matters.

What is compared, each variant a fresh process, runs alternating A, B, A, B (medians of >= 5 pairs):
- ``training``: one epoch of a frozen ResNet-50 (torchvision's, the same class in both; random
  init, 8-class head, batch 64, 224 px after Resize(256)+CenterCrop(224)): ``baseline_train.py``
  against ``train`` with ``model=torchvision/resnet50 pretrained=false freeze=head augment=none``
  and every other hyperparameter at its default except ``feature_cache=off`` (so this is the
  per-epoch loop: data pipeline, channels_last, the measured AMP choice, eval-mode frozen norms).
  images/s and seconds are the training loop's own (the baseline's first batch to last step; our
  ``event=epoch`` line), wall seconds the whole process.
- ``tuning``: a 10-epoch frozen-backbone trial end to end (process start to exit, validation
  every epoch): ``train`` with ``feature_cache=off`` against the default ``feature_cache=auto``.
  The baseline's 10-epoch time is extrapolated from its measured one-epoch run (wall time + 9 more
  epochs of training and validation), not run: ten more minutes of the machine for a known figure.
- ``decode``: ms per image to decode and resize to the 256 px shorter side, one thread: ours (Pillow
  with draft mode, then a uint8 tensor resized by torch), the same decode with Pillow's resize (our
  loader before the tensor path), Pillow without draft mode (``ImageFolder``), and
  ``torchvision.io.decode_jpeg`` + tensor resize.
- ``--gpu``: ResNet-50 AMP training images/s on CUDA: a synthetic-batch step (the GPU's compute
  ceiling) and our trainer's epoch on the photos (full fine-tune, ``amp=auto``).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from local.bench.report import RESULTS_DIR, interleaved, medians, require_quiet, write_result

PHOTO_SIZE = (500, 375)
LARGE_SIZE = (2000, 1500)
JPEG_QUALITY = 90
TRAIN_PER_CLASS, VALID_PER_CLASS = 64, 16
EPOCHS_TUNING = 10
VENV_BIN = Path(sys.executable).parent
BASE_HPS = {
    "model": "torchvision/resnet50",
    "pretrained": "false",
    "freeze": "head",
    "augment": "none",
    "batch_size": "64",
    "log_interval": "1000",
    "seed": "0",
}


# --- fixed inputs ----------------------------------------------------------------------------


def sources() -> dict[str, Any]:
    from skimage import data

    return {
        "astronaut": data.astronaut,
        "cat": data.chelsea,
        "coffee": data.coffee,
        "rocket": data.rocket,
        "galaxy": data.hubble_deep_field,
        "tissue": data.immunohistochemistry,
        "retina": data.retina,
        "motorcycle": lambda: data.stereo_motorcycle()[0],
    }


def _variant(photo, rng, size: tuple[int, int]):
    from PIL import Image

    h, w = photo.shape[:2]
    full_w, full_h = (w, round(w * 3 / 4)) if w * 3 / 4 <= h else (round(h * 4 / 3), h)
    scale = (rng.uniform(0.35, 1.0)) ** 0.5
    cw, ch = max(16, round(full_w * scale)), max(12, round(full_h * scale))
    x, y = rng.integers(0, w - cw + 1), rng.integers(0, h - ch + 1)
    image = Image.fromarray(photo[y : y + ch, x : x + cw])
    if rng.random() < 0.5:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return image.resize(size, Image.Resampling.LANCZOS)


def write_photos(train_per_class: int, valid_per_class: int, size: tuple[int, int] = PHOTO_SIZE, seed: int = 0) -> Path:
    """``<temp>/image-classifier-bench/<recipe>/{train,validation}/<class>/*.jpg``, written once."""
    import numpy as np

    recipe = f"photos-{size[0]}x{size[1]}-q{JPEG_QUALITY}-{train_per_class}-{valid_per_class}-s{seed}-v1"
    root = Path(tempfile.gettempdir()) / "image-classifier-bench" / recipe
    if (root / "done").exists():
        return root
    shutil.rmtree(root, ignore_errors=True)
    rng = np.random.default_rng(seed)
    for name, load in sources().items():
        photo = load()
        for split, count in (("train", train_per_class), ("validation", valid_per_class)):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                _variant(photo, rng, size).save(folder / f"{name}-{i:03d}.jpg", quality=JPEG_QUALITY)
    (root / "done").write_text(recipe + "\n")
    return root


# --- the two trainers as processes -------------------------------------------------------------


def _env(base: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SM_")}
    env.update(
        SAGEMAKER_BASE_DIR=str(base),
        PATH=f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}",
        IMAGE_CLASSIFIER_PRETRAINED_DIR=str(base / "no-baked-weights"),
        HF_HUB_OFFLINE="1",
        PYTHONUNBUFFERED="1",
    )
    return env


def run_baseline(data: Path, epochs: int = 1) -> dict[str, float]:
    started = time.perf_counter()
    command = [sys.executable, "-m", "local.bench.baseline_train", "--train", str(data / "train"), "--valid", str(data / "validation")]
    out = subprocess.run([*command, "--epochs", str(epochs)], capture_output=True, text=True, check=True).stdout
    wall = time.perf_counter() - started
    last = json.loads(out.strip().splitlines()[-1])
    return {
        "images_per_s": last["images_per_s"],
        "epoch_seconds": last["epoch_seconds"],
        "valid_seconds": last["valid_seconds"],
        "wall_seconds": wall,
    }


def _fields(line: str) -> dict[str, str]:
    return dict(re.findall(r"(\w+)=(\S+)", line))


def run_ours(data: Path, hyperparameters: dict[str, str]) -> dict[str, Any]:
    """One ``train`` job on a fresh /opt/ml; what its log lines say, and its wall time."""
    from local.sample_data import write_job

    base = Path(tempfile.mkdtemp(prefix="bench-job-"))
    try:
        write_job(base, data, hyperparameters)
        started = time.perf_counter()
        result = subprocess.run(["train"], env=_env(base), cwd=base, capture_output=True, text=True)
        wall = time.perf_counter() - started
        if result.returncode != 0:
            raise RuntimeError(f"train exited {result.returncode}:\n{result.stdout[-3000:]}{result.stderr[-2000:]}")
    finally:
        shutil.rmtree(base, ignore_errors=True)
    events: dict[str, list[dict[str, str]]] = {}
    for line in result.stdout.splitlines():
        if "event=" in line:
            fields = _fields(line[line.index("event=") :])
            events.setdefault(fields["event"], []).append(fields)
    return {"wall_seconds": wall, "events": events}


def _float(events: dict, event: str, key: str, index: int = -1) -> float:
    return float(events[event][index][key])


# --- benchmarks --------------------------------------------------------------------------------


def bench_training(data: Path, pairs: int, warmup: int) -> dict[str, Any]:
    seen: dict[str, list] = {"amp": [], "baseline_valid": []}

    def baseline() -> dict[str, float]:
        result = run_baseline(data)
        seen["baseline_valid"].append(result.pop("valid_seconds"))
        return result

    def ours() -> dict[str, float]:
        run = run_ours(data, {**BASE_HPS, "epochs": "1", "feature_cache": "off"})
        events = run["events"]
        seen["amp"].append(events.get("amp_decision", [{}])[-1].get("chosen", "?"))
        epoch = events["epoch"][-1]
        return {
            "images_per_s": float(epoch["images_per_sec"]),
            "epoch_seconds": float(epoch["epoch_seconds"]),
            "wall_seconds": run["wall_seconds"],
        }

    runs = interleaved({"baseline (hand-written loop)": baseline, "ours (train, feature_cache=off)": ours}, pairs, warmup)
    notes = {
        "inputs": f"{_count(data / 'train')} train + {_count(data / 'validation')} validation photos, {PHOTO_SIZE[0]}x{PHOTO_SIZE[1]} JPEG q{JPEG_QUALITY}, 8 classes",
        "configuration": "frozen torchvision ResNet-50, new 8-class head, batch 64, 224 px (Resize 256 + CenterCrop 224), one epoch",
        "ours": "train model=torchvision/resnet50 pretrained=false freeze=head augment=none feature_cache=off, other hyperparameters at their defaults",
        "ours_amp_decisions": ",".join(seen["amp"]),
        "baseline_valid_seconds_median": round(statistics.median(seen["baseline_valid"][warmup:]), 2),
        "wall_seconds": "the whole process: start-up, one epoch, validation (both), our pre-flight check, AMP probe and artifact",
    }
    return write_result(
        "training",
        runs,
        ratios={
            "epoch throughput, ours / baseline": ("ours (train, feature_cache=off)", "baseline (hand-written loop)", "images_per_s"),
            "epoch time, baseline / ours": ("baseline (hand-written loop)", "ours (train, feature_cache=off)", "epoch_seconds"),
        },
        notes=notes,
    )


def bench_tuning(data: Path, pairs: int, warmup: int, training: dict[str, Any] | None) -> dict[str, Any]:
    def trial(feature_cache: str) -> Callable[[], dict[str, float]]:
        def run() -> dict[str, float]:
            events = (result := run_ours(data, {**BASE_HPS, "epochs": str(EPOCHS_TUNING), "feature_cache": feature_cache}))["events"]
            epochs = events["epoch"]
            return {
                "wall_seconds": result["wall_seconds"],
                "train_seconds": _float(events, "final", "train_seconds"),
                "seconds_per_epoch": statistics.fmean(float(e["epoch_seconds"]) for e in epochs),
            }

        return run

    names = ("ours, feature_cache=off", "ours, feature_cache=auto (cached features)")
    runs = interleaved({names[0]: trial("off"), names[1]: trial("auto")}, pairs, warmup)
    notes: dict[str, Any] = {
        "trial": f"{EPOCHS_TUNING} epochs, frozen torchvision ResNet-50, augment=none, batch 64, validation every epoch, "
        f"{_count(data / 'train')} train + {_count(data / 'validation')} validation photos; wall = process start to exit",
        "seconds_per_epoch": "the epoch loop only; with cached features the one backbone pass is outside it (event=feature_cache_built)",
        "accuracy": "not compared here (random-init backbone); the contract test tests/contract/test_train_fast_paths.py shows equal accuracy",
    }
    if training:
        base = training["medians"]["baseline (hand-written loop)"]
        estimate = base["wall_seconds"] + (EPOCHS_TUNING - 1) * (base["epoch_seconds"] + training["notes"]["baseline_valid_seconds_median"])
        ours_cached = medians(runs)[names[1]]["wall_seconds"]
        notes["baseline_10_epochs_extrapolated_seconds"] = round(estimate, 1)
        notes["baseline_extrapolation"] = "measured one-epoch wall time + 9 x (its median epoch + validation seconds), from training.json"
        notes["cached_vs_baseline_extrapolated"] = f"{estimate / ours_cached:.2f}x"
    return write_result(
        "tuning", runs, ratios={"10-epoch trial, off / cached features (wall)": (names[0], names[1], "wall_seconds")}, notes=notes
    )


def bench_decode(pairs: int) -> dict[str, Any]:
    """ms per image to decode + resize to a 256 px shorter side, single-threaded as in a loader worker."""
    import torch
    import torchvision
    from PIL import Image
    from torchvision.transforms import InterpolationMode, v2

    from image_classifier.data.loading import load_rgb
    from image_classifier.data.presets import to_pixels

    torch.set_num_threads(1)
    sets = {"500x375": sorted(write_photos(TRAIN_PER_CLASS, VALID_PER_CLASS).glob("train/*/*.jpg"))[::2][:64]}
    sets["2000x1500"] = sorted(write_photos(2, 0, LARGE_SIZE).glob("train/*/*.jpg"))
    side, bilinear = 256, InterpolationMode.BILINEAR
    resize = v2.Resize(side, interpolation=bilinear, antialias=True)

    def ours(p: Path) -> object:
        return resize(to_pixels(load_rgb(p, (side, side))))

    def pil_draft(p: Path) -> object:
        return resize(load_rgb(p, (side, side)))

    def imagefolder_pil(p: Path) -> object:
        with open(p, "rb") as f:
            return resize(Image.open(f).convert("RGB"))

    def tv_io(p: Path) -> object:
        raw = torchvision.io.read_file(str(p))
        return resize(torchvision.io.decode_jpeg(raw, mode=torchvision.io.ImageReadMode.RGB, apply_exif_orientation=True))

    def timing(decode: Callable[[Path], object]) -> Callable[[], dict[str, float]]:
        def run() -> dict[str, float]:
            out = {}
            for name, paths in sets.items():
                started = time.perf_counter()
                for path in paths:
                    decode(path)
                out[f"ms_per_image_{name}"] = 1000 * (time.perf_counter() - started) / len(paths)
            return out

        return run

    variants = {
        "ours: Pillow + draft, tensor resize": timing(ours),
        "Pillow + draft, Pillow resize": timing(pil_draft),
        "Pillow, no draft (ImageFolder)": timing(imagefolder_pil),
        "torchvision.io.decode_jpeg + tensor resize": timing(tv_io),
    }
    runs = interleaved(variants, pairs, warmup=1)
    notes = {
        "what": "decode a JPEG (quality 90) to RGB and resize its shorter side to 256 px (bilinear, antialiased), one thread",
        "inputs": f"{len(sets['500x375'])} benchmark photos at 500x375 and {len(sets['2000x1500'])} at 2000x1500",
    }
    return write_result("decode", runs, notes=notes)


def bench_gpu(pairs: int, images_per_class: int) -> dict[str, Any] | None:
    import torch

    if not torch.cuda.is_available():
        print("no CUDA device: the GPU section is skipped (nothing written)")
        return None
    data = write_photos(images_per_class, 8)

    def synthetic() -> dict[str, float]:
        import torchvision

        model = torchvision.models.resnet50(num_classes=8).cuda().to(memory_format=torch.channels_last)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        x = torch.randn(128, 3, 224, 224, device="cuda").contiguous(memory_format=torch.channels_last)
        y = torch.randint(0, 8, (128,), device="cuda")
        steps = 30
        for step in range(steps + 5):
            if step == 5:
                torch.cuda.synchronize()
                started = time.perf_counter()
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = torch.nn.functional.cross_entropy(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        torch.cuda.synchronize()
        return {"images_per_s": steps * 128 / (time.perf_counter() - started)}

    def trainer(freeze: str) -> Callable[[], dict[str, float]]:
        def run() -> dict[str, float]:
            hps = {**BASE_HPS, "freeze": freeze, "epochs": "2", "batch_size": "128", "feature_cache": "off"}
            events = run_ours(data, hps)["events"]
            return {"images_per_s": float(events["epoch"][-1]["images_per_sec"])}  # the second epoch: workers warm

        return run

    runs = interleaved(
        {
            "synthetic batch (compute ceiling, bf16, channels_last)": synthetic,
            "our trainer, full fine-tune, amp=auto": trainer("none"),
            "our trainer, frozen backbone, amp=auto": trainer("head"),
        },
        pairs,
        warmup=1,
    )
    notes = {"inputs": f"{_count(data / 'train')} train photos 500x375 q{JPEG_QUALITY}, batch 128, torchvision ResNet-50 at 224 px"}
    return write_result("gpu_training", runs, notes=notes)


def _count(folder: Path) -> int:
    return sum(1 for _ in folder.glob("*/*.jpg"))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=("decode", "training", "tuning"), action="append", help="run only these parts (repeatable)")
    parser.add_argument("--pairs", type=int, default=5, help="interleaved A/B pairs (at least 5)")
    parser.add_argument("--warmup", type=int, default=1, help="unmeasured rounds of every variant first (training)")
    parser.add_argument("--tuning-warmup", type=int, default=0, help="the same for tuning (its runs are long; training warmed the machine)")
    parser.add_argument("--train-per-class", type=int, default=TRAIN_PER_CLASS)
    parser.add_argument("--valid-per-class", type=int, default=VALID_PER_CLASS)
    parser.add_argument("--gpu", action="store_true", help="only the GPU section (ResNet-50 AMP training on CUDA)")
    parser.add_argument("--gpu-per-class", type=int, default=256, help="training photos per class for --gpu")
    parser.add_argument("--allow-busy", action="store_true", help="run on a busy machine; the results are marked not comparable")
    args = parser.parse_args(argv)
    require_quiet(args.allow_busy)
    if args.gpu:
        bench_gpu(args.pairs, args.gpu_per_class)
        return
    parts = args.only or ["decode", "training", "tuning"]
    data = write_photos(args.train_per_class, args.valid_per_class)
    print(f"inputs: {data}", flush=True)
    training = None
    for part in parts:
        started = time.perf_counter()
        if part == "decode":
            document = bench_decode(args.pairs)
        elif part == "training":
            document = training = bench_training(data, args.pairs, args.warmup)
        else:
            if training is None and (RESULTS_DIR / "training.json").exists():
                training = json.loads((RESULTS_DIR / "training.json").read_text())
            document = bench_tuning(data, args.pairs, args.tuning_warmup, training)
        print(
            f"{part}: {time.perf_counter() - started:.0f} s; medians {json.dumps(document['medians'])}; ratios {document['ratios']}",
            flush=True,
        )


if __name__ == "__main__":
    main()
