"""The hosting options' figures: the payload ceiling, a serverless-sized `serve`, and what metrics cost.

    python -m local.bench.hosting_bench                       # all three (~8 min on 2 CPU cores)
    python -m local.bench.hosting_bench --only ceiling        # or: serverless, metrics

- ``ceiling`` (results/hosting_ceiling.{json,md}): ``serve`` with ``SAGEMAKER_MAX_PAYLOAD_IN_MB`` at
  ``MAX_PAYLOAD_CEILING_MB`` (an asynchronous endpoint's container), one worker, answering a large real
  JPEG and a large real PNG (a mosaic of the eight scikit-image photos at their own resolution, so the
  bytes are those of photographs, sized to 50-64 MB): latency of each request, the peak resident
  memory of the whole process tree (front, Java, worker: sampled every 20 ms) and Java's own; then
  four PNGs at once (they go one per worker, the rest wait unread in the front).
- ``serverless`` (results/hosting_serverless.{json,md}): the default model (ResNet-50) served as a
  serverless endpoint's container is (``SAGEMAKER_MAX_PAYLOAD_IN_MB=4``, one worker, CPU only): the
  cold start (process start to ``/ping`` 200 and to the first answer) and the peak resident memory of
  the process tree through start-up and 20 requests.
- ``metrics`` (results/hosting_metrics.{json,md}): ``IMAGE_CLASSIFIER_METRICS`` on (the default)
  against off, interleaved: p50 latency at concurrency 1 and images/s at concurrency 16. The
  benchmark, not a timed test, shows that metrics add no measurable latency.

The model is serve_bench's: torchvision ResNet-50, random initialisation, BN statistics of the
photos (speed and memory do not depend on the weights' values).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psutil

from image_classifier import params
from local.bench.report import interleaved, require_quiet, write_result
from local.bench.serving_kit import PHOTOS, VENV_BIN, Server, build_artifact, free_port, photos, timed_posts, wait_for_machine

TARGET_BYTES = 60 * 1024 * 1024  # the large images: between 50 MB and the 64 MB ceiling


class PeakMemory:
    """The largest resident set of a process tree (and of its Java process) while running."""

    def __init__(self, pid: int, interval: float = 0.02):
        self.root, self.interval = psutil.Process(pid), interval
        self.peak = self.java = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        total = java = 0
        for process in [self.root, *self.root.children(recursive=True)]:
            try:
                rss = process.memory_info().rss
                total += rss
                java += rss if process.name() == "java" else 0
            except psutil.Error:
                continue
        self.peak, self.java = max(self.peak, total), max(self.java, java)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            time.sleep(self.interval)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *_: Any) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()


def mosaic(fmt: str, target: int = TARGET_BYTES) -> tuple[bytes, int]:
    """A mosaic of 400 px crops of the scikit-image photos at their own resolution (random photo, offset and
    mirroring per tile, seeded: no two tiles alike, so neither format finds repeats), encoded as ``fmt`` and
    grown until it is within 5 % under ``target`` bytes; (bytes, pixels)."""
    import numpy as np
    import skimage.data
    from PIL import Image

    sources = []
    for name in PHOTOS:
        pixels = getattr(skimage.data, name)()
        image = np.asarray(Image.fromarray(pixels[0] if isinstance(pixels, tuple) else pixels).convert("RGB"))
        if min(image.shape[:2]) >= 400:
            sources.append(image)
    side = 4000
    for _ in range(8):
        rng = np.random.default_rng(0)
        n = -(-side // 400)
        rows = []
        for _ in range(n):
            row = []
            for _ in range(n):
                photo = sources[rng.integers(len(sources))]
                y, x = rng.integers(photo.shape[0] - 399), rng.integers(photo.shape[1] - 399)
                tile = photo[y : y + 400, x : x + 400]
                row.append(tile[:, ::-1] if rng.integers(2) else tile)
            rows.append(np.concatenate(row, axis=1))
        buffer = io.BytesIO()
        options = {"quality": 100, "subsampling": 0} if fmt == "JPEG" else {"compress_level": 6}
        Image.fromarray(np.ascontiguousarray(np.concatenate(rows, axis=0)[:side, :side])).save(buffer, format=fmt, **options)
        size = len(buffer.getvalue())
        if 0.95 * target <= size <= target:
            return buffer.getvalue(), side * side
        side = int(side * (target * 0.975 / size) ** 0.5)
    raise RuntimeError(f"{fmt}: could not reach {target} bytes")


def start(work: Path, env: dict[str, str], name: str) -> Server:
    wait_for_machine(900)
    port, mms_port = free_port(), free_port()
    while abs(port - mms_port) < 2:
        mms_port = free_port()
    serve_env = {
        **os.environ,
        "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "CUDA_VISIBLE_DEVICES": "",
        "SAGEMAKER_BASE_DIR": str(work),
        "SAGEMAKER_BIND_TO_PORT": str(port),
        "IMAGE_CLASSIFIER_MMS_PORT": str(mms_port),
        "TMPDIR": str(work),
        **env,
    }
    return Server([str(VENV_BIN / "serve")], serve_env, port, work / f"{name}.log")


def post(port: int, body: bytes, content_type: str) -> tuple[int, float]:
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    started = time.perf_counter()
    conn.request("POST", "/invocations", body=body, headers={"Content-Type": content_type})
    response = conn.getresponse()
    response.read()
    conn.close()
    return response.status, time.perf_counter() - started


def ceiling(work: Path, images: list[bytes]) -> dict[str, Any]:
    large = {"jpeg": mosaic("JPEG"), "png": mosaic("PNG")}
    env = {params.MAX_PAYLOAD_ENV: str(params.MAX_PAYLOAD_CEILING_MB)}
    server = start(work, env, "ceiling")
    runs: dict[str, list[dict[str, float]]] = {"jpeg": [], "png": [], "png x4 at once": []}
    try:
        server.cold_start(images[0])
        idle = PeakMemory(server.process.pid)
        with idle:
            time.sleep(0.5)
        for _ in range(5):
            for kind, (body, pixels) in large.items():
                with PeakMemory(server.process.pid) as memory:
                    status, seconds = post(server.port, body, f"image/{kind}")
                assert status == 200, (kind, status, server.log_path.read_text()[-2000:])
                runs[kind].append(
                    {
                        "megabytes": len(body) / 2**20,
                        "megapixels": pixels / 1e6,
                        "latency_s": seconds,
                        "peak_rss_mb": memory.peak / 2**20,
                        "java_rss_mb": memory.java / 2**20,
                        "idle_rss_mb": idle.peak / 2**20,
                    }
                )
            png = large["png"][0]
            with PeakMemory(server.process.pid) as memory, ThreadPoolExecutor(4) as pool:
                started = time.perf_counter()
                statuses = [s for s, _ in pool.map(post, [server.port] * 4, [png] * 4, ["image/png"] * 4)]
                wall = time.perf_counter() - started
            assert statuses == [200] * 4, statuses
            runs["png x4 at once"].append({"megabytes": 4 * len(png) / 2**20, "latency_s": wall, "peak_rss_mb": memory.peak / 2**20})
    finally:
        server.stop()
    return write_result(
        "hosting_ceiling",
        runs,
        notes={
            "setting": f"{params.MAX_PAYLOAD_ENV}={params.MAX_PAYLOAD_CEILING_MB}, one worker (JVM heap "
            f"{params.JVM_BASE_HEAP_MB + params.JVM_HEAP_COPIES * params.MAX_PAYLOAD_CEILING_MB} MB), defaults otherwise",
            "inputs": f"mosaics of the scikit-image photos ({', '.join(PHOTOS)}) in 400 px tiles at their own resolution: "
            "JPEG quality 100 without chroma subsampling, PNG compression 6",
            "model": "torchvision/resnet50, 1000 classes, 224 px (serve_bench's artifact)",
        },
    )


def serverless(work: Path, images: list[bytes], runs_count: int = 5) -> dict[str, Any]:
    env = {params.MAX_PAYLOAD_ENV: "4", params.TIMEOUT_ENV: "60", params.WORKERS_ENV: "1"}
    runs: dict[str, list[dict[str, float]]] = {"serverless container": []}
    for i in range(runs_count):
        server = start(work, env, f"serverless-{i}")
        try:
            with PeakMemory(server.process.pid) as memory:
                ping, first = server.cold_start(images[0])
                latencies, errors, _ = timed_posts(server.port, images, 20, 1)
            runs["serverless container"].append(
                {
                    "ping_200_s": ping,
                    "first_answer_s": first,
                    "p50_ms": 1000 * statistics.median(latencies),
                    "errors": float(errors),
                    "peak_rss_mb": memory.peak / 2**20,
                    "java_rss_mb": memory.java / 2**20,
                }
            )
        finally:
            server.stop()
    return write_result(
        "hosting_serverless",
        runs,
        notes={
            "setting": f"{params.MAX_PAYLOAD_ENV}=4 {params.TIMEOUT_ENV}=60, one worker, CPU only (CUDA_VISIBLE_DEVICES empty); "
            "the CUDA torch build of .venv (the CPU-only build loads the same model)",
            "model": "torchvision/resnet50, 1000 classes, 224 px (the default model's architecture)",
            "requests": "20 sequential JPEGs (500x375) after the first answer",
        },
    )


def metrics(work: Path, images: list[bytes], pairs: int) -> dict[str, Any]:
    count = iter(range(10**6))

    def variant(switch: str) -> Callable[[], dict[str, float]]:
        def run() -> dict[str, float]:
            server = start(work, {params.METRICS_ENV: switch}, f"metrics-{switch}-{next(count)}")
            try:
                server.cold_start(images[0])
                timed_posts(server.port, images, 32, 16)  # untimed: batch shapes met once
                single, errors_c1, _ = timed_posts(server.port, images, 60, 1)
                _, errors_c16, wall = timed_posts(server.port, images, 160, 16)
            finally:
                server.stop()
            return {
                "p50_ms_c1": 1000 * statistics.median(single),
                "images_per_s_c16": (160 - errors_c16) / wall,
                "errors": float(errors_c1 + errors_c16),
            }

        return run

    runs = interleaved({"metrics on": variant("on"), "metrics off": variant("off")}, pairs=pairs)
    return write_result(
        "hosting_metrics",
        runs,
        ratios={
            "p50 c1, on / off": ("metrics on", "metrics off", "p50_ms_c1"),
            "images/s c16, on / off": ("metrics on", "metrics off", "images_per_s_c16"),
        },
        notes={
            "requests": "60 sequential, 160 from 16 clients, 500x375 JPEGs; serve's defaults otherwise",
            "model": "torchvision/resnet50, 224 px",
        },
    )


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=("ceiling", "serverless", "metrics"), action="append", default=None)
    parser.add_argument("--pairs", type=int, default=5, help="metrics: interleaved on/off pairs (at least 5)")
    parser.add_argument("--allow-busy", action="store_true", help="run on a busy machine; the result is marked not comparable")
    return parser


def main(args: argparse.Namespace) -> None:
    require_quiet(args.allow_busy)
    images = photos()
    sections = args.only or ["ceiling", "serverless", "metrics"]
    with tempfile.TemporaryDirectory(prefix="hosting-bench-") as tmp:
        work = Path(tmp)
        build_artifact(work / "model", images)
        for section in sections:
            if section == "ceiling":
                document = ceiling(work, images)
            elif section == "serverless":
                document = serverless(work, images)
            else:
                document = metrics(work, images, args.pairs)
            print(
                json.dumps({"benchmark": document["benchmark"], "medians": document["medians"], "ratios": document["ratios"]}), flush=True
            )


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
