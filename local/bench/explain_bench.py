"""What an explanation costs against a plain prediction, on one running ``serve``.

    python -m local.bench.explain_bench                 # ~5 min on 2 CPU cores -> results/explain.{json,md}
    python -m local.bench.explain_bench --allow-busy    # on a busy machine: the result is marked not comparable

One ``serve`` (defaults: it chooses its precision and graph at load) with serve_bench's fixed
model (ResNet-50, 224 px) and photos. Each variant sends the same photos one at a time and reports
the median latency (ms) and the median of the worker's ``explain`` stage from ``Server-Timing``:
plain (no attribute), ``explain=gradcam``, ``explain=saliency``, ``explain=integrated_gradients``;
the variants alternate (``report.interleaved``), so the machine's drift hits all alike. The ratios
are explained over plain latency. Plain requests run the same code as before explanations existed
(one more custom attribute looked up); the served graph is not touched: explanations run on the
eager fp32 module kept beside it.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from local.bench.report import interleaved, medians, require_quiet, write_result
from local.bench.serving_kit import ARCHITECTURE, PHOTOS, Server, build_artifact, free_port, photos, wait_for_machine

METHODS = ("gradcam", "saliency", "integrated_gradients")


def post(port: int, image: bytes, attributes: str | None) -> tuple[float, dict[str, float]]:
    """Seconds for one request and its Server-Timing stages; an error stops the benchmark."""
    from image_classifier.serving.timing import parse_server_timing

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    headers = {"Content-Type": "image/jpeg"}
    if attributes:
        headers["X-Amzn-SageMaker-Custom-Attributes"] = attributes
    started = time.perf_counter()
    conn.request("POST", "/invocations", body=image, headers=headers)
    response = conn.getresponse()
    body = response.read()
    elapsed = time.perf_counter() - started
    conn.close()
    if response.status != 200:
        raise SystemExit(f"{attributes}: {response.status} {body[:300]!r}")
    return elapsed, parse_server_timing(response.getheader("Server-Timing"))


def variant(port: int, images: list[bytes], attributes: str | None, count: int) -> Callable[[], dict[str, float]]:
    def run() -> dict[str, float]:
        latencies, explain = [], []
        for i in range(count):
            elapsed, stages = post(port, images[i % len(images)], attributes)
            latencies.append(elapsed * 1000)
            explain.append(stages.get("explain", 0.0))
        return {"p50_ms": statistics.median(latencies), "explain_stage_ms": statistics.median(explain)}

    return run


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="explanation vs plain prediction latency on one serve")
    parser.add_argument("--pairs", type=int, default=5, help="interleaved rounds (at least 5), after one warm-up round")
    parser.add_argument("--requests", type=int, default=8, help="requests per round for plain, gradcam and saliency")
    parser.add_argument("--requests-ig", type=int, default=2, help="requests per round for integrated_gradients (16 passes each)")
    parser.add_argument("--wait-seconds", type=float, default=900, help="how long to wait for another MMS to finish")
    parser.add_argument("--allow-busy", action="store_true", help="run on a busy machine; the result is marked not comparable")
    return parser


def main(args: argparse.Namespace) -> dict[str, Any]:
    from image_classifier import params

    wait_for_machine(args.wait_seconds)
    require_quiet(args.allow_busy)
    images = photos()
    with tempfile.TemporaryDirectory(prefix="explain-bench-") as tmp:
        work = Path(tmp)
        build_artifact(work / "model", images)
        port = free_port()
        env = {
            **os.environ,
            params.BASE_DIR_ENV: str(work),
            params.BIND_PORT_ENV: str(port),
            params.MMS_PORT_ENV: str(free_port()),
            "TMPDIR": str(work),
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        }
        server = Server(["serve"], env, port, work / "serve.log")
        try:
            server.cold_start(images[0])
            runs = interleaved(
                {
                    "plain": variant(port, images, None, args.requests),
                    **{
                        m: variant(port, images, f"explain={m}", args.requests_ig if m == "integrated_gradients" else args.requests)
                        for m in METHODS
                    },
                },
                pairs=args.pairs,
            )
            chose = server.chosen_precision(), server.chosen_graph()
        finally:
            server.stop()
    middle = medians(runs)
    notes = {
        "model": f"{ARCHITECTURE}, 1000 classes, random init with BN statistics of the photos, 224 px (serve_bench's)",
        "inputs": f"{len(images)} photos ({', '.join(PHOTOS)}), 500x375 JPEG, one request at a time on 127.0.0.1",
        "requests per round": f"{args.requests} (plain, gradcam, saliency), {args.requests_ig} (integrated_gradients, "
        f"{params.EXPLAIN_IG_STEPS} steps)",
        "serve chose": f"precision={chose[0]} graph={chose[1]} for the served forward; explanations run eager fp32",
        "plain p50": f"{middle['plain']['p50_ms']:.1f} ms",
    }
    document = write_result(
        "explain",
        runs,
        ratios={f"{m} / plain, p50": (m, "plain", "p50_ms") for m in METHODS},
        notes=notes,
    )
    print(json.dumps({"medians": document["medians"], "ratios": document["ratios"]}, indent=2))
    return document


if __name__ == "__main__":
    main(get_args_parser().parse_args())
