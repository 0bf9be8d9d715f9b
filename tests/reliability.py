"""What the reliability tests share: the full/short switch, the figures they report, and probes of
a running ``serve`` (its process tree and MMS's workers) taken from outside, as an operator would.

``RELIABILITY_FULL=1`` (``make test-full``) runs the long variants: more fuzzed bodies, a longer
load run. Figures land in ``FIGURES`` and are printed at the end of the run as one
``reliability {...}`` line per test (see ``tests/contract/conftest.py``).
"""

from __future__ import annotations

import io
import os

import psutil
import requests
from PIL import Image

from image_classifier.serving.mms import LAUNCHER

FULL = os.environ.get("RELIABILITY_FULL") == "1"
FIGURES: dict[str, dict] = {}


def scaled(short: int, full: int) -> int:
    return full if FULL else short


def mms_workers(proc) -> list[dict]:
    """MMS's own view of the model's workers (its management API listens on 127.0.0.1 only)."""
    described = requests.get(f"http://127.0.0.1:{proc.mms_port + 1}/models/model", timeout=10).json()
    model = described[0] if isinstance(described, list) else described
    return list(model["workers"])


def worker_fingerprint(proc) -> list[tuple[str, str, str]]:
    return sorted((w["id"], w["startTime"], w["status"]) for w in mms_workers(proc))


def server_processes(proc) -> dict[str, psutil.Process]:
    """Every process of a running ``serve``: the front, the Java server and each Python worker.

    MMS starts one Python backend server per worker (through the launcher, forked from the pre-fork
    interpreter: serving/prefork.py); it forks one child per connection from Java, which loads the
    model and answers requests. Keys name each process so its RSS can be followed.
    """
    front = psutil.Process(proc.process.pid)
    found = {"front": front}
    for child in front.children(recursive=True):
        command = " ".join(child.cmdline())
        if "java" in child.name() or "com.amazonaws.ml.mms" in command:
            found["java"] = child
        elif "mms.model_server" in command:  # multi-model-server's command line, Java's parent
            found["mms_cli"] = child
        elif LAUNCHER in command:  # what MMS started as its python: it hands the worker's start to the fork server
            found[f"launcher-{child.pid}"] = child
        elif "image_classifier.serving.prefork" in command:
            found["prefork"] = child
        elif "model_service_worker" in command:
            found[f"worker-{child.pid}"] = child
    return found


def model_workers(proc) -> list[psutil.Process]:
    """The Python processes that hold the model: the forked children of MMS's backend server."""
    workers = [p for name, p in server_processes(proc).items() if name.startswith("worker-")]
    pids = {p.pid for p in workers}
    return [p for p in workers if p.ppid() in pids]


def encoded(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()
