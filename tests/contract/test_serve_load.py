"""Load on a real ``serve``: 2,000 requests at concurrency 16 (10,000 under ``make test-full``).

Zero errors, every answer well-formed, latency percentiles and throughput reported, and the
resident memory of every server process (the front, the Java server with its fixed heap, each
Python worker) grows less than 10 % between the first and the last fifth of the run: a leak of a
few kilobytes a request shows up here.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import statistics
import threading
import time

import aiohttp
import psutil
import pytest
from PIL import Image

from tests.helpers import ServeProcess
from tests.reliability import FIGURES, scaled, server_processes, worker_fingerprint

REQUESTS = scaled(2_000, 10_000)
CONCURRENCY = 16
WARM_UP = 2 * CONCURRENCY  # not counted: first connections, first JIT compilations
MAX_RSS_GROWTH = 0.10


@pytest.fixture(scope="module")
def server(digits_job, tmp_path_factory):
    proc = ServeProcess(
        digits_job[0],
        tmp_path_factory.mktemp("serve-load"),
        SAGEMAKER_MODEL_SERVER_WORKERS="2",
        IMAGE_CLASSIFIER_BATCH_SIZE="8",
        IMAGE_CLASSIFIER_MAX_BATCH_DELAY_MS="5",
    )
    proc.wait_ready()
    proc.classes = json.loads((digits_job[0] / "model" / "model_card.json").read_text())["classes"]
    yield proc
    proc.stop()


def payloads(digits_data) -> list[tuple[str, bytes, int]]:
    """Real digit photos as each content type sends them: (content type, body, images)."""
    out = []
    for i, path in enumerate(sorted((digits_data / "test").rglob("*.png"))[:60]):
        image = Image.open(path).convert("RGB").resize((48, 48))
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG" if i % 2 else "PNG")
        data = buffer.getvalue()
        if i % 3 == 0:
            out.append(("application/json", json.dumps({"instances": [{"b64": base64.b64encode(data).decode()}] * 2}).encode(), 2))
        else:
            out.append(("image/jpeg" if i % 2 else "image/png", data, 1))
    return out


class RssSampler(threading.Thread):
    """Samples the RSS of every server process with the number of requests done so far."""

    def __init__(self, processes: dict[str, psutil.Process], done: list[int]):
        super().__init__(daemon=True)
        self.processes, self.done = processes, done
        self.samples: list[tuple[int, dict[str, int]]] = []
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.is_set():
            self.samples.append((self.done[0], {name: p.memory_info().rss for name, p in self.processes.items()}))
            self.stopped.wait(0.2)

    def growth(self, total: int) -> dict[str, dict[str, float]]:
        """Per process: median RSS over the first and the last fifth of the requests, and the growth."""
        out = {}
        for name in self.processes:
            first = [rss[name] for done, rss in self.samples if done <= total / 5]
            last = [rss[name] for done, rss in self.samples if done >= total * 4 / 5]
            before, after = statistics.median(first), statistics.median(last)
            out[name] = {"first_mb": round(before / 2**20, 1), "last_mb": round(after / 2**20, 1), "growth": round(after / before - 1, 4)}
        return out


async def _run(url: str, bodies, total: int, done: list[int], classes: list[str]) -> tuple[list[float], list[str]]:
    latencies: list[float] = []
    errors: list[str] = []
    counter = iter(range(total))
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=CONCURRENCY)) as session:

        async def client() -> None:
            for i in counter:
                content_type, body, images = bodies[i % len(bodies)]
                started = time.perf_counter()
                try:
                    async with session.post(f"{url}/invocations", data=body, headers={"Content-Type": content_type}) as response:
                        text = await response.text()
                        status = response.status
                except aiohttp.ClientError as exc:
                    errors.append(f"{i}: {type(exc).__name__}")
                    continue
                latencies.append(time.perf_counter() - started)
                done[0] += 1
                if status != 200:
                    errors.append(f"{i}: {status} {text[:200]}")
                    continue
                predictions = json.loads(text)["predictions"]
                if len(predictions) != images or any(p["label"] not in classes for p in predictions):
                    errors.append(f"{i}: malformed {text[:200]}")

        await asyncio.gather(*(client() for _ in range(CONCURRENCY)))
    return latencies, errors


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@pytest.mark.slow
def test_load_without_errors_or_memory_growth(server, digits_data):
    bodies = payloads(digits_data)
    warm: list[int] = [0]
    asyncio.run(_run(server.url, bodies, WARM_UP, warm, server.classes))
    workers_before = worker_fingerprint(server)
    processes = server_processes(server)
    assert "java" in processes and sum(name.startswith("worker-") for name in processes) == 3, processes  # server + 2 workers
    done = [0]
    sampler = RssSampler(processes, done)
    sampler.start()
    started = time.perf_counter()
    latencies, errors = asyncio.run(_run(server.url, bodies, REQUESTS, done, server.classes))
    seconds = time.perf_counter() - started
    sampler.stopped.set()
    sampler.join()

    assert errors == [], (len(errors), errors[:5])
    assert len(latencies) == REQUESTS
    assert worker_fingerprint(server) == workers_before  # no worker was replaced under load
    growth = sampler.growth(REQUESTS)
    FIGURES["load"] = {
        "requests": REQUESTS,
        "concurrency": CONCURRENCY,
        "errors": len(errors),
        "seconds": round(seconds, 1),
        "requests_per_second": round(REQUESTS / seconds, 1),
        "p50_ms": round(_percentile(latencies, 0.50) * 1000, 1),
        "p99_ms": round(_percentile(latencies, 0.99) * 1000, 1),
        "max_ms": round(max(latencies) * 1000, 1),
        "rss": growth,
    }
    grown = {name: g for name, g in growth.items() if g["growth"] >= MAX_RSS_GROWTH}
    assert grown == {}, (grown, growth)
