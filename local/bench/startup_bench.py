"""Start-up benchmark: how long ``serve`` takes to answer, stage by stage, and a second model's first answer.

    python -m local.bench.startup_bench                                  # ~3 min on 2 CPU cores -> results/startup.{json,md}
    python -m local.bench.startup_bench --baseline-src /tmp/base/container/src   # before/after in one run

Single model (``starts``: each variant started afresh, interleaved): the seconds from the process start
to each stage, read from the timestamps of serve's own log lines:

    front_listening   the front answers on its port (``event=listening``)
    preloaded         the pre-fork interpreter has imported torch and the rest (``event=prefork_ready``;
                      serving/prefork.py: started beside Java, every worker is forked from it)
    worker_started    multi-model-server's Java is up, the model is registered and its Python worker has
                      connected (MMS's ``Connection accepted``)
    imports           the worker has imported torch and the rest (``event=worker_imports``)
    model_built       the weights are in the network, on its device (``event=model_built``)
    graph_ready       precision and graph decided, runner built (``event=fast_path``), warmed up
                      (``event=model_loaded``)
    ping_200          ``GET /ping`` answers 200 (polled every 20 ms by this benchmark)
    first_answer      the first ``POST /invocations`` answered 200 (sent right after the ping)
    frozen_ready      where the frozen graph is built after start (``event=graph_ready``)

and ``decision_s``, the precision and graph decision alone (facts read, FLOPs counted, the rule applied:
``event=fast_path ... decide_s=``), ``fast_path_s`` with the runner built and a bf16 choice confirmed.

Multi-model (one server per variant): a model loaded (``POST /models``), then ``--second-models`` more, each
timed from its load request to its first answer (``second_model_first_answer_s``, median), and the memory of
the whole process tree with every model loaded (``models_pss_mb``: proportional set size, shared pages split
between the processes that share them); ``one_model_pss_mb`` is the same for a single-model start, once its
frozen graph is in place.

Variants: ``after`` (this checkout), ``no_prefork`` (the same with ``IMAGE_CLASSIFIER_PREFORK=off``: each
worker a fresh interpreter) and, with ``--baseline-src``, ``before``.

``--baseline-src`` runs the same with another checkout's package first on ``PYTHONPATH`` (the worker
inherits it): the "before" beside the "after" in the same run.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from local.bench.report import interleaved, medians, require_quiet, write_result
from local.bench.serving_kit import VENV_BIN, build_artifact, free_port, photos, wait_for_machine

# (stage, the log line that marks it); each line's own timestamp is read
STAGES = (
    ("front_listening", r"event=listening"),
    ("preloaded", r"event=prefork_ready"),
    ("worker_started", r"Connection accepted"),
    ("imports", r"event=worker_imports"),
    ("model_built", r"event=model_built"),
    ("graph_ready", r"event=model_loaded"),
)
STAMP = re.compile(r"^(\d{4}-\d\d-\d\d)[T ](\d\d:\d\d:\d\d),(\d{3})")


def stamp(line: str) -> float | None:
    """The wall-clock time of a log line: the front's Python lines and MMS's Java lines (worker output) alike."""
    match = STAMP.match(line)
    if not match:
        return None
    return datetime.strptime(f"{match.group(1)} {match.group(2)}", "%Y-%m-%d %H:%M:%S").timestamp() + int(match.group(3)) / 1000


def stages(log: str, started: float) -> dict[str, float]:
    out: dict[str, float] = {}
    lines = log.splitlines()
    for name, pattern in (*STAGES, ("frozen_ready", r"event=graph_ready")):
        at = next((stamp(line) for line in lines if re.search(pattern, line) and stamp(line)), None)
        if at is not None:
            out[f"{name}_s"] = at - started
    decision = re.search(r"event=fast_path .*?decide_s=([\d.]+) seconds=([\d.]+)", log)
    if decision:  # the rule alone, and the fast path with the runner built and bf16 confirmed
        out["decision_s"], out["fast_path_s"] = float(decision.group(1)), float(decision.group(2))
    return out


def _status(port: int, method: str, path: str, body: bytes | None = None, headers: dict | None = None) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        response.read()
        return response.status
    except (OSError, http.client.HTTPException):
        return 0
    finally:
        conn.close()


class Serve:
    def __init__(self, work: Path, env: dict[str, str], log_path: Path, **extra: str):
        self.port, mms_port = free_port(), free_port()
        while abs(self.port - mms_port) < 2:
            mms_port = free_port()
        serve_env = {
            **env,
            "SAGEMAKER_BASE_DIR": str(work),
            "SAGEMAKER_BIND_TO_PORT": str(self.port),
            "IMAGE_CLASSIFIER_MMS_PORT": str(mms_port),
            "TMPDIR": str(work),
            **extra,
        }
        self.log_path = log_path
        self.started = time.time()
        with open(log_path, "w") as log:
            self.process = subprocess.Popen([str(VENV_BIN / "serve")], env=serve_env, stdout=log, stderr=subprocess.STDOUT)

    def until(self, check: Callable[[], bool], timeout: float = 120.0) -> float:
        """Seconds from the process start until ``check`` holds (polled every 20 ms)."""
        while time.time() - self.started < timeout:
            if self.process.poll() is not None:
                raise RuntimeError(f"serve exited with {self.process.returncode}\n{self.log_path.read_text()[-3000:]}")
            if check():
                return time.time() - self.started
            time.sleep(0.02)
        raise RuntimeError(f"not within {timeout:.0f}s\n{self.log_path.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=40)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def single_start(work: Path, env: dict[str, str], photo: bytes, name: str, count: list[int]) -> dict[str, float]:
    count[0] += 1
    server = Serve(work, env, work / f"{name}-{count[0]}.log")
    try:
        ping = server.until(lambda: _status(server.port, "GET", "/ping") == 200)
        first = server.until(lambda: _status(server.port, "POST", "/invocations", photo, {"Content-Type": "image/jpeg"}) == 200)
        if "graph_deferred=frozen" in server.log_path.read_text():  # the frozen graph is still being built: its time too
            server.until(lambda: re.search(r"event=(graph_ready|serve_graph_failed)", server.log_path.read_text()) is not None, 60)
        pss = tree_pss_mb(server.process.pid)
    finally:
        server.stop()
    return {**stages(server.log_path.read_text(), server.started), "ping_200_s": ping, "first_answer_s": first, "one_model_pss_mb": pss}


def multi_model(work: Path, env: dict[str, str], photo: bytes, name: str, second_models: int) -> dict[str, float]:
    """One multi-model server: a first model, then ``second_models`` more, each from load request to first answer."""
    server = Serve(work, env, work / f"{name}-multi.log", SAGEMAKER_MULTI_MODEL="true")
    timings: list[float] = []
    loads: list[float] = []
    try:
        server.until(lambda: _status(server.port, "GET", "/ping") == 200)
        for i in range(second_models + 1):
            asked = time.time()
            body = json.dumps({"model_name": f"m{i}", "url": str(work / "model")}).encode()
            status = _status(server.port, "POST", "/models", body, {"Content-Type": "application/json"})
            loaded = time.time()
            if status != 200:
                raise RuntimeError(f"load m{i}: {status}\n{server.log_path.read_text()[-3000:]}")
            status = _status(server.port, "POST", f"/models/m{i}/invoke", photo, {"Content-Type": "image/jpeg"})
            if status != 200:
                raise RuntimeError(f"invoke m{i}: {status}")
            if i:
                timings.append(time.time() - asked)
                loads.append(loaded - asked)
        pss = tree_pss_mb(server.process.pid)
    finally:
        server.stop()
    return {
        "second_model_first_answer_s": statistics.median(timings),
        "second_model_load_s": statistics.median(loads),
        "models_pss_mb": pss,
    }


def tree_pss_mb(root: int) -> float:
    """Proportional set size of ``root`` and every process below it (Linux /proc), in MB."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(parent, []).append(int(entry.name))
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        todo.extend(children.get(pid, []))
        try:
            rollup = (Path("/proc") / str(pid) / "smaps_rollup").read_text()
        except OSError:
            continue
        total += next((int(line.split()[1]) for line in rollup.splitlines() if line.startswith("Pss:")), 0)
    return total / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=5, help="starts of each variant (at least 5), after one warm-up start")
    parser.add_argument("--second-models", type=int, default=3)
    parser.add_argument("--baseline-src", type=Path, default=None, help="another checkout's container/src: the 'before' variant")
    parser.add_argument("--name", default="startup")
    parser.add_argument("--allow-busy", action="store_true", help="run on a busy machine; the result is marked not comparable")
    args = parser.parse_args()
    wait_for_machine(900)
    require_quiet(args.allow_busy)
    images = photos()
    env = {**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}", "PYTHONUNBUFFERED": "1", "CUDA_VISIBLE_DEVICES": ""}
    variants: dict[str, dict[str, str]] = {"no_prefork": {**env, "IMAGE_CLASSIFIER_PREFORK": "off"}, "after": env}
    if args.baseline_src:
        variants = {"before": {**env, "PYTHONPATH": str(args.baseline_src.resolve())}, **variants}
    count = [0]
    with tempfile.TemporaryDirectory(prefix="startup-bench-") as tmp:
        work = Path(tmp)
        build_artifact(work / "model", images)
        runs = interleaved(
            {name: (lambda e=e, n=name: single_start(work, e, images[0], n, count)) for name, e in variants.items()}, pairs=args.pairs
        )
        multi = {name: multi_model(work, e, images[0], name, args.second_models) for name, e in variants.items()}
    for name, values in multi.items():
        for row in runs[name]:
            row.update(values)
    middle = medians(runs)
    worst = {name: max(row["ping_200_s"] for row in rows) for name, rows in runs.items()}
    ratios = {
        "ping 200, after / no_prefork": ("after", "no_prefork", "ping_200_s"),
        "second model's first answer, after / no_prefork": ("after", "no_prefork", "second_model_first_answer_s"),
        "memory with every model loaded, after / no_prefork": ("after", "no_prefork", "models_pss_mb"),
        "memory with one model, after / no_prefork": ("after", "no_prefork", "one_model_pss_mb"),
    }
    if "before" in runs:
        ratios |= {
            "ping 200, after / before": ("after", "before", "ping_200_s"),
            "first answer, after / before": ("after", "before", "first_answer_s"),
            "second model's first answer, after / before": ("after", "before", "second_model_first_answer_s"),
        }
    document = write_result(
        args.name,
        runs,
        ratios=ratios,
        notes={
            "model": "torchvision/resnet50 artifact (1000 classes, as serve_bench builds it), CPU, defaults",
            "stages": "seconds from the process start to the log line that marks each stage (module docstring)",
            "worst ping_200_s of the starts": json.dumps({k: round(v, 2) for k, v in worst.items()}),
            "multi-model": f"one server per variant; a first model, then {args.second_models} more, each timed from its "
            "load request (POST /models) to its first answer; median",
            "baseline": str(args.baseline_src or "none"),
        },
    )
    print(json.dumps({"medians": middle, "ratios": document["ratios"], "worst_ping_200_s": worst}, indent=2))


if __name__ == "__main__":
    sys.exit(main())
