"""What the data costs as it grows: folders against shards at 10k, 100k and 1M images, in one run.

    python -m local.bench.data_bench                      # -> results/data.{json,md} (~25 min on 2 cores, 3 GB of disk)
    python -m local.bench.data_bench --sizes 10000 --images-per-rate 2000    # a quick look

Synthetic JPEGs (64x48, ten classes, ~2 KB each) are written once under ``local/data/bench-data``
(folders at 10k and 100k; shards at every size, 1M only as shards). For each:

- **start-up**, the part that depends on the data, split into its phases: a folder is walked
  (``index``) and every image decoded at draft scale (``check``: the pre-flight, on this machine's
  two cores); a sharded split's manifest is read and its chunk table built (``index``), every shard's
  presence and size checked and a bounded sample decoded (``check``); then the first batch of a loader
  (``first_batch``).
- **data-only images/s**: a ``DataLoader`` (two workers, batch 64, the training transform at 64 px)
  consuming ``--images-per-rate`` images, with nothing simulated and with a simulated remote file
  system (FastFile over S3): ``--latency-ms`` (10 ms) before the first byte of every file open and
  ``--bandwidth-mb`` (200 MB/s) per stream. Beside it, the **model-only** rate of an
  EfficientNet-Lite0 training step at 64 px: what the data has to keep up with on this CPU.
- **memory per loader worker** (unique set size) after the measured batches, and the **objects
  opened per epoch** (files for a folder, chunk reads for shards).
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import torch
from PIL import Image
from torch.utils.data import DataLoader

from image_classifier.data.datasets import LabelledImages, ResumableSampler, collate
from image_classifier.data.discovery import index_split
from image_classifier.data.loading import find_unreadable
from image_classifier.data.presets import DataConfig, train_transform
from image_classifier.data.shard_stream import ShardedSplit, ShardStream, StreamedImages, decodes
from image_classifier.data.shards import check_files, write_items
from local.bench.report import RESULTS_DIR, machine, require_quiet

DATA = Path("local/data/bench-data")
CLASSES = [f"class_{i}" for i in range(10)]
CONFIG = DataConfig(64, (0.5,) * 3, (0.5,) * 3, "bilinear", 1.0)
BATCH, WORKERS = 64, 2


def jpeg(i: int) -> bytes:
    rng = np.random.default_rng(i)
    base = rng.integers(0, 256, 3)
    pixels = np.clip(base + rng.normal(0, 30, (48, 64, 3)), 0, 255).astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "JPEG", quality=85)
    return out.getvalue()


def write_folder(n: int) -> Path:
    root = DATA / f"folder-{n}"
    if (root / ".complete").exists():
        return root
    for c in CLASSES:
        (root / c).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        (root / CLASSES[i % 10] / f"{i:08d}.jpg").write_bytes(jpeg(i))
    (root / ".complete").write_text("")
    return root


def write_sharded(n: int) -> Path:
    root = DATA / f"shards-{n}"
    if (root / ".complete").exists():
        return root
    write_items(((jpeg(i), "jpg", i % 10) for i in range(n)), CLASSES, root, split="train")
    (root / ".complete").write_text("")
    return root


class SlowFile:
    """A file behind a simulated remote file system: the first byte after ``latency``, then ``bandwidth`` bytes/s."""

    def __init__(self, path, mode, latency: float, bandwidth: float):
        time.sleep(latency)
        self.handle, self.bandwidth = open(path, mode), bandwidth

    def seek(self, offset: int) -> int:
        return self.handle.seek(offset)

    def read(self, size: int = -1) -> bytes:
        data = self.handle.read(size)
        time.sleep(len(data) / self.bandwidth)
        return data

    def close(self) -> None:
        self.handle.close()

    def __enter__(self) -> SlowFile:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class SlowFolderImages(LabelledImages):
    """The folder dataset with the same simulated file system in front of every image's file."""

    def __init__(self, *args, latency: float, bandwidth: float, **kwargs):
        super().__init__(*args, **kwargs)
        self.latency, self.bandwidth = latency, bandwidth

    def __getitem__(self, key):
        index = key[0] if isinstance(key, tuple) else key
        path = self.samples.path(index)
        time.sleep(self.latency + path.stat().st_size / self.bandwidth)
        return super().__getitem__(key)


def _workers_uss(loader_iter) -> float:
    pids = [w.pid for w in getattr(loader_iter, "_workers", [])]
    sizes = [psutil.Process(pid).memory_full_info().uss for pid in pids if psutil.pid_exists(pid)]
    return statistics.mean(sizes) / 2**20 if sizes else float("nan")


def rate(loader: DataLoader, images: int) -> tuple[float, float, float]:
    """(seconds to the first batch, images/s after it over ``images``, mean worker USS in MB)."""
    started = time.perf_counter()
    iterator = iter(loader)
    next(iterator)
    first = time.perf_counter() - started
    seen, t0 = 0, time.perf_counter()
    for _images, labels, _bad in iterator:
        seen += len(labels)
        if seen >= images:
            break
    per_second = seen / (time.perf_counter() - t0)
    uss = _workers_uss(iterator)
    del iterator
    return first, per_second, uss


def folder_loader(samples, *, latency: float, bandwidth: float) -> DataLoader:
    transform = train_transform(CONFIG, "standard")
    dataset = (
        SlowFolderImages(samples, transform, draft_size=CONFIG.resize_size, latency=latency, bandwidth=bandwidth)
        if latency
        else LabelledImages(samples, transform, draft_size=CONFIG.resize_size)
    )
    sampler = ResumableSampler(len(samples), seed=0, shuffle=True, with_seeds=True)
    return DataLoader(dataset, batch_size=BATCH, sampler=sampler, num_workers=WORKERS, collate_fn=collate)


def shard_loader(split: ShardedSplit, *, latency: float, bandwidth: float) -> tuple[DataLoader, ShardStream]:
    opener = (lambda path, mode: SlowFile(path, mode, latency, bandwidth)) if latency else open
    stream = ShardStream(split, seed=0, shuffle=True, with_seeds=True, opener=opener)
    loader = DataLoader(
        StreamedImages(train_transform(CONFIG, "standard")), batch_size=BATCH, sampler=stream, num_workers=WORKERS, collate_fn=collate
    )
    return loader, stream


def bench_folder(n: int, args) -> dict[str, Any]:
    root = write_folder(n)
    started = time.perf_counter()
    index = index_split("train", root)
    indexed = time.perf_counter()
    find_unreadable(index.samples.paths(), workers=2)
    checked = time.perf_counter()
    first, zero, uss = rate(folder_loader(index.samples, latency=0, bandwidth=0), args.images_per_rate)
    _, slow, _ = rate(
        folder_loader(index.samples, latency=args.latency_ms / 1000, bandwidth=args.bandwidth_mb * 2**20), args.images_per_rate
    )
    return {
        "index_s": indexed - started,
        "check_s": checked - indexed,
        "first_batch_s": first,
        "startup_s": checked - started + first,
        "images_per_s": zero,
        "images_per_s_remote": slow,
        "remote_kept": slow / zero,
        "worker_uss_mb": uss,
        "objects_per_epoch": n,
    }


def bench_shards(n: int, args) -> dict[str, Any]:
    root = write_sharded(n)
    started = time.perf_counter()
    split = ShardedSplit.from_folder(root)
    indexed = time.perf_counter()
    check_files(root, split.manifest)
    decodes(split, samples=64, seed=0, rank=0)
    checked = time.perf_counter()
    loader, _ = shard_loader(split, latency=0, bandwidth=0)
    first, zero, uss = rate(loader, args.images_per_rate)
    slow_loader, stream = shard_loader(split, latency=args.latency_ms / 1000, bandwidth=args.bandwidth_mb * 2**20)
    _, slow, _ = rate(slow_loader, args.images_per_rate)
    return {
        "index_s": indexed - started,
        "check_s": checked - indexed,
        "first_batch_s": first,
        "startup_s": checked - started + first,
        "images_per_s": zero,
        "images_per_s_remote": slow,
        "remote_kept": slow / zero,
        "worker_uss_mb": uss,
        "objects_per_epoch": len(split.chunk_len),
        "shards": len(split.manifest.shards),
        "chunk_reads_measured": stream.chunks_read,
    }


def model_rate() -> float:
    import timm

    torch.set_num_threads(2)
    model = timm.create_model("tf_efficientnet_lite0", num_classes=10).to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), 3e-3)
    x = torch.randn(BATCH, 3, 64, 64).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (BATCH,))
    times = []
    for _ in range(6):
        t0 = time.perf_counter()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
        optimizer.zero_grad()
        times.append(time.perf_counter() - t0)
    return BATCH / statistics.median(times[1:])


def markdown(document: dict[str, Any]) -> str:
    m = document["machine"]
    lines = [
        "### data",
        "",
        f"{m['cpu']}, {m['cores']} cores, torch {m['torch']}, {m['date']}; {WORKERS} loader workers, batch {BATCH}, 64 px; "
        f"simulated remote file system: {document['latency_ms']} ms to the first byte of each open, {document['bandwidth_mb']} MB/s; "
        f"model-only (EfficientNet-Lite0 training step, 64 px): {document['model_images_per_s']:.0f} images/s",
        "",
        "| input | images | index s | check s | first batch s | start-up s | images/s | images/s remote | kept | worker USS MB | objects/epoch |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in document["rows"]:
        lines.append(
            f"| {row['input']} | {row['images']:,} | {row['index_s']:.2f} | {row['check_s']:.2f} | {row['first_batch_s']:.2f} | "
            f"{row['startup_s']:.2f} | {row['images_per_s']:.0f} | {row['images_per_s_remote']:.0f} | {row['remote_kept']:.0%} | "
            f"{row['worker_uss_mb']:.0f} | {row['objects_per_epoch']:,} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--folder-sizes", default="10000,100000", help="folders only up to here (1M files: minutes of file system work)")
    parser.add_argument("--images-per-rate", type=int, default=6000)
    parser.add_argument("--latency-ms", type=float, default=10.0)
    parser.add_argument("--bandwidth-mb", type=float, default=200.0)
    parser.add_argument("--name", default="data")
    parser.add_argument("--allow-busy", action="store_true")
    args = parser.parse_args()
    require_quiet(args.allow_busy)
    rows = []
    folder_sizes = {int(s) for s in args.folder_sizes.split(",")}
    for n in (int(s) for s in args.sizes.split(",")):
        if n in folder_sizes:
            rows.append({"input": "folder", "images": n, **bench_folder(n, args)})
            print(json.dumps(rows[-1]), flush=True)
        rows.append({"input": "shards", "images": n, **bench_shards(n, args)})
        print(json.dumps(rows[-1]), flush=True)
    document = {
        "benchmark": args.name,
        "machine": machine(),
        "latency_ms": args.latency_ms,
        "bandwidth_mb": args.bandwidth_mb,
        "model_images_per_s": model_rate(),
        "rows": rows,
    }
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    (RESULTS_DIR / f"{args.name}.json").write_text(json.dumps(document, indent=2) + "\n")
    (RESULTS_DIR / f"{args.name}.md").write_text(markdown(document))
    print(markdown(document))


if __name__ == "__main__":
    main()
