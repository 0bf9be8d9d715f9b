"""What the serving benchmarks share: the fixed inputs (real photos, a ResNet-50 artifact), HTTP load with
its Server-Timing stages, and a server process to start, time and stop.

Used by ``serve_bench`` (the naive handler against ``serve``), ``startup_bench``, ``hosting_bench`` and
``explain_bench``; the inputs are described in ``serve_bench``'s docstring.
"""

from __future__ import annotations

import http.client
import io
import os
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry", "retina", "stereo_motorcycle")
PHOTO_SIZE = (500, 375)
JPEG_QUALITY = 90
ARCHITECTURE = "torchvision/resnet50"
VENV_BIN = Path(sys.executable).parent
MMS_PROCESS = re.compile(rb"multi-model-server|model_service_worker")


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
