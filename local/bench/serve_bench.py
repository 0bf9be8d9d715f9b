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
import http.client
import io
import json
import os
import random
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from local.bench.report import interleaved, medians, require_quiet, write_result

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry", "retina", "stereo_motorcycle")
PHOTO_SIZE = (500, 375)
JPEG_QUALITY = 90
ARCHITECTURE = "torchvision/resnet50"
CONCURRENCY = 16
VENV_BIN = Path(sys.executable).parent
REPO_ROOT = Path(__file__).resolve().parents[2]
MMS_PROCESS = re.compile(rb"multi-model-server|model_service_worker")
# the stages of one request at concurrency 1, from ``serve``'s Server-Timing header (serving/timing.py)
STAGES = ("total", "front", "queue", "hop", "worker", "decode", "preprocess", "forward", "encode")


# --- fixed inputs ------------------------------------------------------------------------------
def photos() -> list[bytes]:
    """The benchmark's JPEGs: real photos, 4:3 centre crop, 500x375, quality 90."""
    import skimage.data
    from PIL import Image

    out = []
    for name in PHOTOS:
        pixels = getattr(skimage.data, name)()
        image = Image.fromarray(pixels[0] if isinstance(pixels, tuple) else pixels).convert("RGB")
        width, height = image.size
        crop_w, crop_h = min(width, height * 4 // 3), min(height, width * 3 // 4)
        left, top = (width - crop_w) // 2, (height - crop_h) // 2
        image = image.crop((left, top, left + crop_w, top + crop_h)).resize(PHOTO_SIZE, Image.Resampling.LANCZOS)
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=JPEG_QUALITY)
        out.append(buffer.getvalue())
    return out


def build_artifact(model_dir: Path, images: list[bytes]) -> None:
    """ResNet-50 as the trainer writes it; BN statistics from the photos (one cumulative pass)."""
    import torch
    from PIL import Image

    from image_classifier.data.presets import eval_transform
    from image_classifier.model_card import write_artifact
    from image_classifier.modeling.factory import build_architecture, data_config_for

    torch.manual_seed(0)
    model = build_architecture(ARCHITECTURE, 1000)
    config = data_config_for(ARCHITECTURE, model, None)
    transform = eval_transform(config)
    batch = torch.stack([transform(Image.open(io.BytesIO(data)).convert("RGB")) for data in images])
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = None  # cumulative average: the statistics of exactly these photos
    with torch.no_grad():
        model.train()(batch)
    model_dir.mkdir(parents=True, exist_ok=True)
    write_artifact(
        model_dir,
        model.state_dict(),
        architecture=ARCHITECTURE,
        num_classes=1000,
        classes=[f"class_{i:04d}" for i in range(1000)],
        preprocessing=config.as_dict(),
        metrics={},
        hyperparameters={"note": "random init, BN statistics of the benchmark photos"},
        pretrained=None,
        job_name="serve-bench",
    )


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


# --- HTTP load ---------------------------------------------------------------------------------
def request(conn: http.client.HTTPConnection, method: str, path: str, body: bytes | None = None, timings: list | None = None) -> int:
    """The status (0: no answer); ``timings`` collects each 200's ``Server-Timing`` stages."""
    try:
        conn.request(method, path, body=body, headers={"Content-Type": "image/jpeg"} if body is not None else {})
        response = conn.getresponse()
        response.read()
        if timings is not None and response.status == 200 and response.getheader("Server-Timing"):
            from image_classifier.serving.timing import parse_server_timing

            timings.append(parse_server_timing(response.getheader("Server-Timing")))
        return response.status
    except (OSError, http.client.HTTPException):
        conn.close()
        return 0


def timed_posts(
    port: int, images: list[bytes], count: int, concurrency: int, timings: list | None = None
) -> tuple[list[float], int, float]:
    """Latencies (s) of ``count`` POSTs from ``concurrency`` clients, the errors, the wall time."""
    latencies: list[float] = []
    errors = 0
    next_index = iter(range(count))
    lock = threading.Lock()

    def client() -> None:
        nonlocal errors
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        while True:
            with lock:
                i = next(next_index, None)
            if i is None:
                break
            start = time.perf_counter()
            status = request(conn, "POST", "/invocations", images[i % len(images)], timings)
            elapsed = time.perf_counter() - start
            with lock:
                latencies.append(elapsed)
                errors += status != 200
        conn.close()

    started = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return latencies, errors, time.perf_counter() - started


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


# --- servers -----------------------------------------------------------------------------------
def free_port() -> int:
    """A free port (and the next one, MMS's management port) below the ephemeral range MMS refuses."""
    while True:
        port = random.randint(20000, 32000)
        try:
            for candidate in (port, port + 1):
                with socket.socket() as sock:
                    sock.bind(("127.0.0.1", candidate))
        except OSError:
            continue
        return port


def other_model_server() -> bool:
    """MMS's worker socket is fixed (/tmp/.mms.sock.9000): only one may run on a machine."""
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if MMS_PROCESS.search(cmdline.read_bytes()):
                return True
        except OSError:
            continue
    return False


def wait_for_machine(seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while other_model_server():
        if time.monotonic() > deadline:
            raise SystemExit("another multi-model-server is running on this machine; stop it, then run the benchmark")
        print("event=bench_waiting reason=another_multi_model_server", flush=True)
        time.sleep(15)


class Server:
    def __init__(self, command: list[str], env: dict[str, str], port: int, log_path: Path):
        self.port, self.log_path = port, log_path
        self.started = time.perf_counter()
        with open(log_path, "w") as log:
            self.process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def cold_start(self, image: bytes, timeout: float = 300.0) -> tuple[float, float]:
        """Seconds from process start to the first 200 on /ping and on /invocations."""
        ping_at = None
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        while time.perf_counter() - self.started < timeout:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.log_path.name}: exited with {self.process.returncode}\n{self.log_path.read_text()[-3000:]}")
            if ping_at is None and request(conn, "GET", "/ping") == 200:
                ping_at = time.perf_counter() - self.started
            if ping_at is not None and request(conn, "POST", "/invocations", image) == 200:
                return ping_at, time.perf_counter() - self.started
            time.sleep(0.02)
        raise RuntimeError(f"{self.log_path.name}: no 200 within {timeout:.0f}s\n{self.log_path.read_text()[-3000:]}")

    def chosen_precision(self) -> str:
        """What ``serve`` chose at load (``event=fast_path ... chosen=...``); fp32 for the naive server."""
        found = re.search(r"event=fast_path decided_by=\w+ chosen=(\w+) graph=(\w+)", self.log_path.read_text())
        return found.group(1) if found else "fp32"

    def chosen_graph(self) -> str:
        found = re.search(r"event=fast_path decided_by=\w+ chosen=(\w+) graph=(\w+)", self.log_path.read_text())
        return found.group(2) if found else "eager"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=40)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


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
