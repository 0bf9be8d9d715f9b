"""Serving benchmark: ``serve`` beside the naive hand-written server, A/B interleaved in one run.

    python -m local.bench.serve_bench                     # ~12 min on 2 CPU cores -> results/serving.{json,md}
    python -m local.bench.serve_bench --device cuda       # the GPU section -> results/serving_gpu.{json,md}
    python -m local.bench.serve_bench --serve-env IMAGE_CLASSIFIER_BATCH_SIZE=8   # try a setting

What is measured, per run, for each server started fresh on 127.0.0.1 (one at a time):
- cold start: process start -> first 200 on ``POST /invocations`` (and first 200 on ``/ping``);
- latency at concurrency 1: p50 / p99 of ``--requests-c1`` sequential requests;
- throughput at concurrency 16: images/s over ``--requests-c16`` requests from 16 clients, and
  every non-200 counted as an error;
- the roofline: this machine's fp32 matmul rate (a 2048^3 sgemm, torch with one thread per core,
  median of 10) in GFLOP/s divided by ResNet-50's cost per image (counted by
  ``torch.utils.flop_counter`` at 224 px: 8.2 GFLOP = 4.1 GMAC, the figure in torchvision's model
  table) gives the images/s an ideal fp32 server could reach; each run measures it right before
  its server starts and reports its fraction of it, and the same against the bf16 matmul rate
  (the ceiling of a server that runs in bf16, as ours may).

Fixed inputs: the eight real photos bundled with scikit-image (astronaut, chelsea, coffee,
rocket, hubble_deep_field, immunohistochemistry, retina, stereo_motorcycle), centre-cropped to
4:3, resized to 500x375 with Lanczos and encoded as JPEG quality 90 (33-68 kB each).

Fixed model: torchvision ResNet-50, 1000 classes, random initialisation (seed 0; ImageNet weights
are not available offline, and speed does not depend on the values), with batch-norm statistics
measured on the photos so activations have a trained network's scale. It is written the way the
trainer writes artifacts (safetensors + model card with the sha256); both servers load the same
weights. The baseline's code is ``naive_server.py`` and must not be tuned.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from local.bench.report import interleaved, medians, require_quiet, write_result
from local.bench.serving_kit import (
    ARCHITECTURE,
    JPEG_QUALITY,
    PHOTO_SIZE,
    PHOTOS,
    VENV_BIN,
    Server,
    build_artifact,
    free_port,
    percentile,
    photos,
    timed_posts,
    wait_for_machine,
)

CONCURRENCY = 16
REPO_ROOT = Path(__file__).resolve().parents[2]
# the stages of one request at concurrency 1, from ``serve``'s Server-Timing header (serving/timing.py)
STAGES = ("total", "front", "queue", "hop", "worker", "decode", "preprocess", "forward", "encode")


def resnet50_gflop_per_image() -> float:
    import torch
    import torchvision
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.device("meta"), counter, torch.no_grad():
        torchvision.models.resnet50().eval()(torch.zeros(1, 3, 224, 224))
    return counter.get_total_flops() / 1e9


def matmul_gflops(device: str, dtype: str = "float32", size: int = 2048, repeats: int = 10) -> float:
    """Matmul rate (GFLOP/s) with every core: the roofline's ceiling (fp32; bf16 for a bf16 server)."""
    import torch

    torch.set_num_threads(len(os.sched_getaffinity(0)))
    a = torch.randn(size, size, device=device, dtype=getattr(torch, dtype))
    b = torch.randn(size, size, device=device, dtype=getattr(torch, dtype))
    timings = []
    for i in range(repeats + 2):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        torch.mm(a, b)
        if device == "cuda":
            torch.cuda.synchronize()
        if i >= 2:
            timings.append(time.perf_counter() - start)
    return 2 * size**3 / statistics.median(timings) / 1e9


def measure(
    server: Server, images: list[bytes], requests_c1: int, requests_c16: int, rates: dict[str, float], gflop: float, precision: str
) -> dict[str, float]:
    """``precision``: what the server runs in (``serve`` logs its choice), for its own roofline."""
    stages: list[dict[str, float]] = []
    try:
        ready, cold = server.cold_start(images[0])
        timed_posts(server.port, images, 2 * CONCURRENCY, CONCURRENCY)  # untimed: both servers meet batch shapes once
        single, errors_c1, _ = timed_posts(server.port, images, requests_c1, 1, stages)
        _, errors_c16, wall = timed_posts(server.port, images, requests_c16, CONCURRENCY)
    finally:
        server.stop()
    throughput = (requests_c16 - errors_c16) / wall
    chosen = precision if precision != "auto" else server.chosen_precision()
    breakdown = {f"c1_{stage}_ms": statistics.median(s.get(stage, 0.0) for s in stages) for stage in STAGES} if stages else {}
    return {
        **breakdown,
        "bf16": float(chosen == "bf16"),
        "roofline_fraction": throughput / (rates["bfloat16" if chosen == "bf16" else "float32"] / gflop),
        "p50_ms_c1": 1000 * statistics.median(single),
        "p99_ms_c1": 1000 * percentile(single, 99),
        "images_per_s_c16": throughput,
        "errors": float(errors_c1 + errors_c16),
        "cold_start_s": cold,
        "ping_200_s": ready,
        "fp32_matmul_gflops": rates["float32"],
        "fp32_roofline_fraction": throughput / (rates["float32"] / gflop),
        "bf16_matmul_gflops": rates["bfloat16"],
        "bf16_roofline_fraction": throughput / (rates["bfloat16"] / gflop),
    }


def variants(args, work: Path, images: list[bytes], gflop_per_image: float) -> dict[str, Callable[[], dict[str, float]]]:
    env = {**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}", "PYTHONUNBUFFERED": "1"}
    if args.device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    count = iter(range(10**6))

    def roofline() -> dict[str, float]:
        return {dtype: matmul_gflops(args.device, dtype) for dtype in ("float32", "bfloat16")}

    def naive() -> dict[str, float]:
        rates = roofline()
        port = free_port()
        weights = work / "model" / "model.safetensors"
        command = [sys.executable, "-m", "local.bench.naive_server", "--weights", str(weights), "--port", str(port)]
        server = Server(command, {**env, "PYTHONPATH": str(REPO_ROOT)}, port, work / f"naive-{next(count)}.log")
        return measure(server, images, args.requests_c1, args.requests_c16, rates, gflop_per_image, "fp32")

    def ours(extra: dict[str, str] | None = None) -> dict[str, float]:
        rates = roofline()
        wait_for_machine(args.wait_seconds)
        port, mms_port = free_port(), free_port()
        while abs(port - mms_port) < 2:
            mms_port = free_port()
        serve_env = {
            **env,
            "SAGEMAKER_BASE_DIR": str(work),
            "SAGEMAKER_BIND_TO_PORT": str(port),
            "IMAGE_CLASSIFIER_MMS_PORT": str(mms_port),
            "TMPDIR": str(work),
            **dict(item.split("=", 1) for item in args.serve_env),
            **(extra or {}),
        }
        server = Server([str(VENV_BIN / "serve")], serve_env, port, work / f"serve-{next(count)}.log")
        if not extra:
            last_serve.update(server=server, threads=serve_env.get("IMAGE_CLASSIFIER_THREADS_PER_WORKER", ""))
        return measure(server, images, args.requests_c1, args.requests_c16, rates, gflop_per_image, "auto")

    def model_only() -> dict[str, float]:
        """The same graph and precision as the ``serve`` run just before, forward only, in-process."""
        rates = roofline()
        server = last_serve["server"]
        photo = work / "photo.jpg"
        photo.write_bytes(images[0])
        threads = last_serve["threads"] or str(len(os.sched_getaffinity(0)))
        command = [sys.executable, "-m", "local.bench.model_only", "--model-dir", str(work / "model"), "--photo", str(photo)]
        command += ["--precision", server.chosen_precision(), "--graph", server.chosen_graph(), "--threads", threads]
        out = subprocess.run(command, env={**env, "PYTHONPATH": str(REPO_ROOT)}, capture_output=True, text=True, check=True, timeout=600)
        result = json.loads(out.stdout.strip().splitlines()[-1])
        rate = rates["bfloat16" if result["precision"] == "bf16" else "float32"]
        return {
            "p50_ms_c1": result["p50_ms_c1"],
            "images_per_s_c16": result["images_per_s_c16"],
            "bf16": float(result["precision"] == "bf16"),
            "roofline_fraction": result["images_per_s_c16"] / (rate / gflop_per_image),
            "fp32_matmul_gflops": rates["float32"],
            "bf16_matmul_gflops": rates["bfloat16"],
        }

    last_serve: dict[str, Any] = {}
    compared = {f"ours {item}": functools.partial(ours, dict([item.split("=", 1)])) for item in args.compare_env}
    return {"naive": naive, "ours": ours, **compared, "model_only": model_only}


def serve_facts(work: Path) -> dict[str, Any]:
    """What the last ``serve`` run chose at load and how it batched (from its log)."""
    logs = sorted(work.glob("serve-*.log"), key=lambda p: int(p.stem.split("-")[1]))
    text = logs[-1].read_text() if logs else ""
    facts: dict[str, Any] = {}
    for event in ("fast_path", "serve_graph_failed", "model_loaded", "ready"):
        match = re.search(rf"event={event} (.*)", text)
        if match:
            facts[event] = match.group(1).strip()
    sizes = [int(m) for m in re.findall(r"event=batch requests=\d+ accepted=\d+ images=(\d+)", text)]
    if sizes:
        facts["images_per_batch"] = {"mean": round(statistics.mean(sizes), 2), "max": max(sizes), "batches": len(sizes)}
    return facts


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="serve vs the naive handler: latency, throughput, cold start, roofline")
    parser.add_argument("--pairs", type=int, default=5, help="interleaved A/B pairs (at least 5), after one warm-up pair")
    parser.add_argument("--requests-c1", type=int, default=100)
    parser.add_argument("--requests-c16", type=int, default=320)
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="auto: cuda when present")
    parser.add_argument("--serve-env", action="append", default=[], metavar="NAME=VALUE", help="extra environment for serve")
    parser.add_argument("--wait-seconds", type=float, default=900, help="how long to wait for another MMS to finish")
    parser.add_argument("--name", default=None, help="result name (default serving, or serving_gpu on CUDA)")
    parser.add_argument(
        "--compare-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="also measure serve with this setting (A/B in the same run)",
    )
    parser.add_argument("--allow-busy", action="store_true", help="run on a busy machine; the result is marked not comparable")
    return parser


def compared_ratios(settings: list[str]) -> dict[str, tuple[str, str, str]]:
    """Each ``--compare-env`` variant against ``ours`` (the defaults), on both headline figures."""
    out = {}
    for item in settings:
        out[f"throughput c16, ours {item} / ours"] = (f"ours {item}", "ours", "images_per_s_c16")
        out[f"p50 c1, ours {item} / ours"] = (f"ours {item}", "ours", "p50_ms_c1")
    return out


def main(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device here")
    wait_for_machine(args.wait_seconds)
    require_quiet(args.allow_busy)
    images = photos()
    gflop_per_image = resnet50_gflop_per_image()
    with tempfile.TemporaryDirectory(prefix="serve-bench-") as tmp:
        work = Path(tmp)
        build_artifact(work / "model", images)
        runs = interleaved(variants(args, work, images, gflop_per_image), pairs=args.pairs)
        facts = serve_facts(work)
    middle = medians(runs)
    notes = {
        "inputs": f"{len(images)} real photos (scikit-image: {', '.join(PHOTOS)}), {PHOTO_SIZE[0]}x{PHOTO_SIZE[1]} JPEG quality {JPEG_QUALITY}, "
        f"{min(map(len, images)) // 1000}-{max(map(len, images)) // 1000} kB",
        "model": f"{ARCHITECTURE}, 1000 classes, random init with BN statistics of the photos, 224 px",
        "requests": f"{args.requests_c1} sequential (concurrency 1), {args.requests_c16} from {CONCURRENCY} clients, on 127.0.0.1",
        "roofline": f"ResNet-50 costs {gflop_per_image:.2f} GFLOP per image (torch.utils.flop_counter at 224 px); each run measures "
        f"the fp32 and the bf16 matmul rate (2048^3, every core) right before its server starts: {middle['ours']['fp32_matmul_gflops']:.0f} "
        f"and {middle['ours']['bf16_matmul_gflops']:.0f} GFLOP/s. roofline_fraction is the c16 throughput over the rate of the precision "
        f"the server runs in (bf16 = 1: serve chose bf16; the naive server is fp32)",
        "outside the forward pass at c1": f"{middle['ours']['p50_ms_c1'] - middle['ours'].get('c1_forward_ms', 0.0):.1f} ms (p50 minus the "
        "forward stage of serve's Server-Timing; the c1_* columns are the stage medians)",
        "model_only": "the worker's forward step alone (stack, forward, softmax) with the graph and precision serve chose, in-process: "
        "p50 at batch 1, images/s at batch 16 (local/bench/model_only.py)",
        "serve settings": " ".join(args.serve_env) or "defaults",
        "serve chose": json.dumps(facts),
        "device": args.device,
    }
    document = write_result(
        args.name or ("serving" if args.device == "cpu" else "serving_gpu"),
        runs,
        ratios={
            **compared_ratios(args.compare_env),
            "throughput c16, ours / naive": ("ours", "naive", "images_per_s_c16"),
            "throughput c16, ours / model only": ("ours", "model_only", "images_per_s_c16"),
            "p50 c1, ours / naive": ("ours", "naive", "p50_ms_c1"),
            "p50 c1, ours / model only": ("ours", "model_only", "p50_ms_c1"),
            "p99 c1, ours / naive": ("ours", "naive", "p99_ms_c1"),
            "cold start, ours / naive": ("ours", "naive", "cold_start_s"),
        },
        notes=notes,
    )
    print(json.dumps({"medians": document["medians"], "ratios": document["ratios"]}, indent=2))
    return document


if __name__ == "__main__":
    main(get_args_parser().parse_args())
