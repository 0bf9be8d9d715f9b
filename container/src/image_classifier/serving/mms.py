"""Run multi-model-server as a child we own: generated config, private temp dir, own session.

``sagemaker_inference.model_server.start_model_server`` hard-codes /etc paths and refuses to
start beside another MMS; starting MMS in the foreground ourselves gives full control of paths,
ports and shutdown. MMS listens on 127.0.0.1 only; the front owns the public port.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlencode

from image_classifier import params
from image_classifier.errors import UserError
from image_classifier.serving.config import ServingConfig
from image_classifier.serving.prefork_launcher import SOCKET_ENV

log = logging.getLogger(__name__)
HANDLER = "image_classifier.serving.handler_service:handle"


def jvm_heap(config: ServingConfig) -> str:
    """A fixed heap (-Xms = -Xmx), every page touched at start: Java's RSS is the same after a million
    requests as after the first, so memory growth under load can be asserted (tests/contract/test_serve_load.py).
    Its size follows the payload limit (``ServingConfig.jvm_heap_mb``)."""
    return f"-Xms{config.jvm_heap_mb}m -Xmx{config.jvm_heap_mb}m -XX:+AlwaysPreTouch"


# Everything to stdout (CloudWatch reads it), MMS at INFO; its per-request access and metric
# lines would double every request in the log and are off. Worker output (our event= lines)
# reaches stdout through MMS's WorkerLifeCycle logger.
LOG4J2 = """<?xml version="1.0" encoding="UTF-8"?>
<Configuration>
  <Appenders>
    <Console name="STDOUT" target="SYSTEM_OUT"><PatternLayout pattern="%d{ISO8601} [%-5p] %t %c - %m%n"/></Console>
  </Appenders>
  <Loggers>
    <Logger name="ACCESS_LOG" level="off"/>
    <Logger name="MODEL_METRICS" level="off"/>
    <Logger name="MMS_METRICS" level="off"/>
    <Logger name="MODEL_LOG" level="info"/>
    <Logger name="io.netty" level="error"/>
    <Logger name="org.apache" level="off"/>
    <Logger name="com.amazonaws.ml.mms" level="info"/>
    <Logger name="com.amazonaws.ml.mms.wlm.WorkerThread" level="warn"/>
    <Root level="info"><AppenderRef ref="STDOUT"/></Root>
  </Loggers>
</Configuration>
"""


def mms_properties(config: ServingConfig, workdir: Path) -> dict[str, str]:
    return {
        "inference_address": f"http://127.0.0.1:{config.mms_port}",
        "management_address": f"http://127.0.0.1:{config.mms_management_port}",
        "model_store": str(workdir / "model-store"),
        "default_service_handler": HANDLER,
        "default_workers_per_model": str(config.workers),
        "decode_input_request": "false",
        "job_queue_size": "1000",
        # the front enforces SAGEMAKER_MAX_PAYLOAD_IN_MB with a JSON 413; MMS must not cut in first: a lone
        # request at the limit, or an envelope of batch_size requests of up to the real-time limit each
        "max_request_size": str(config.max_request_bytes),
        "max_response_size": str(64 * 1024 * 1024),
        "default_response_timeout": str(config.timeout_seconds),
        "unregister_model_timeout": str(config.timeout_seconds),
        "preload_model": "false",
        "vmargs": f"{jvm_heap(config)} -XX:+UseContainerSupport -XX:-UseLargePages -Dlog4j2.formatMsgNoLookups=true",
    }


# measured A/B in one run (local/bench/results/serving.md, 2026-12-01, ResNet-50 bf16 on 2 cores):
# against passive, 20000 spins gave p50 at c1 0.76x and throughput at c16 1.10x; libgomp's default 0.81x and 1.02x
DEFAULT_OMP_SPIN = "20000"


def openmp_wait(setting: str, environ: dict[str, str] | os._Environ) -> dict[str, str]:
    """How the worker's OpenMP threads wait at each barrier of a forward pass (``IMAGE_CLASSIFIER_OMP_SPIN``).

    A number (the default, 20000): they spin that many times, then sleep (GOMP_SPINCOUNT): a
    barrier reached within microseconds costs no wake-up, and a team member descheduled by the
    front, Java or a neighbour is not waited for by spinning. ``passive``: they sleep at once
    (OMP_WAIT_POLICY=PASSIVE); each of a forward pass's ~160 barriers then costs a wake-up (about
    12 ms per ResNet-50 image at batch 1). ``default``: libgomp's own (a long spin: the team waits
    for a descheduled member at every layer, ResNet-50 at batch 1 on 2 busy cores 120-340 ms
    instead of 58-122 ms). An OMP_WAIT_POLICY or GOMP_SPINCOUNT already set is left alone.
    """
    if "OMP_WAIT_POLICY" in environ or "GOMP_SPINCOUNT" in environ or setting == "default":
        return {}
    if setting == "passive":
        return {"OMP_WAIT_POLICY": "PASSIVE"}
    if setting.isdigit():
        return {"GOMP_SPINCOUNT": setting}
    raise UserError(f"{params.OMP_SPIN_ENV}={setting!r}: use passive, default or a spin count")


# multi-model-server's command line always names its own interpreter as the workers' python (``--python
# sys.executable``): run it with that name replaced by the pre-fork launcher (serving.prefork_launcher)
MMS_CLI = "import sys; sys.executable = sys.argv.pop(1); sys.argv[0] = 'multi-model-server'; from mms.model_server import start; start()"


LAUNCHER = "serve-worker-python"  # the console script of serving.prefork_launcher, beside this interpreter


class ModelServer:
    def __init__(self, config: ServingConfig, workdir: Path):
        self.config = config
        self.workdir = workdir
        self.process: subprocess.Popen | None = None
        self.prefork: subprocess.Popen | None = None
        self.sockets = Path("/nonexistent")

    def start(self) -> None:
        (self.workdir / "model-store").mkdir(parents=True, exist_ok=True)
        (self.workdir / "tmp").mkdir(exist_ok=True)
        properties = self.workdir / "config.properties"
        properties.write_text("".join(f"{k}={v}\n" for k, v in mms_properties(self.config, self.workdir).items()))
        log_config = self.workdir / "log4j2.xml"
        log_config.write_text(LOG4J2)
        # the workers' sockets (.mms.sock.9000, ...) go to java.io.tmpdir, which multi-model-server takes from
        # TEMP, not TMPDIR: /tmp, shared by every server on the machine, unless each has its own (short: a
        # socket path holds at most 107 bytes)
        self.sockets = Path(tempfile.mkdtemp(prefix="mms-", dir="/tmp"))
        env = {
            **os.environ,
            "TMPDIR": str(self.workdir / "tmp"),  # MMS's pid file lives there
            "TEMP": str(self.sockets),
            "PYTHONUNBUFFERED": "1",
            params.THREADS_ENV: str(self.config.threads_per_worker),
            "OMP_NUM_THREADS": str(self.config.threads_per_worker),
        }
        if self.config.threads_per_worker > 1:
            env.update(openmp_wait(os.environ.get(params.OMP_SPIN_ENV, DEFAULT_OMP_SPIN), os.environ))
        python, launcher = sys.executable, Path(sys.executable).with_name(LAUNCHER)
        if self.config.prefork and not launcher.exists():
            log.warning("event=prefork_off reason=%s_not_installed", LAUNCHER)
        elif self.config.prefork:
            python = str(launcher)
            env[SOCKET_ENV] = str(self.sockets / "prefork.sock")
            # its own session, like MMS's: stop() signals both groups; started first, its imports overlap Java's start
            self.prefork = subprocess.Popen(
                [sys.executable, "-m", "image_classifier.serving.prefork", "--socket", env[SOCKET_ENV]],
                env=env,
                cwd=self.workdir,
                start_new_session=True,
            )
        command = [
            sys.executable,
            "-c",
            MMS_CLI,
            python,
            "--start",
            "--foreground",
            "--mms-config",
            str(properties),
            "--model-store",
            str(self.workdir / "model-store"),
            "--log-config",
            str(log_config),
        ]
        self.process = subprocess.Popen(command, env=env, cwd=self.workdir, start_new_session=True)
        log.info(
            "event=mms_started pid=%d inference_port=%d management_port=%d prefork=%s",
            self.process.pid,
            self.config.mms_port,
            self.config.mms_management_port,
            "off" if self.prefork is None else f"pid_{self.prefork.pid}",
        )

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM to both process groups (java and the launchers; the pre-fork interpreter and every Python
        worker), SIGKILL after ``grace``."""
        processes = [p for p in (self.process, self.prefork) if p is not None]
        if not processes:
            return
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
            alive = [p.pid for p in processes if _group_alive(p.pid)]
            for pgid in alive:
                try:
                    os.killpg(pgid, sig)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline and any(_group_alive(pgid) for pgid in alive):
                time.sleep(0.1)
            if not any(_group_alive(p.pid) for p in processes):
                break
        for process in processes:
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        shutil.rmtree(self.sockets, ignore_errors=True)
        log.info("event=mms_stopped")


def _group_alive(pgid: int) -> bool:
    """Reap what has exited in the group (as PID 1 in a container, orphans are ours), then probe."""
    while True:
        try:
            pid, _ = os.waitpid(-pgid, os.WNOHANG)
        except ChildProcessError:
            break
        if pid == 0:
            break
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def link_into_store(store: Path, name: str, model_dir: str) -> str:
    """MMS loads only from its model store: link the artifact folder in under a safe name."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name) or "model"
    link = store / safe
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(Path(model_dir).resolve(), target_is_directory=True)
    return safe


def register_query(config: ServingConfig, name: str, store_entry: str) -> str:
    """The management-API query that loads a model (what SageMaker's multi-model protocol asks)."""
    return urlencode(
        {
            "url": store_entry,
            "model_name": name,
            "initial_workers": config.workers,
            "batch_size": 1,  # the front batches (see serving.batching): MMS must not
            "max_batch_delay": 1,
            "response_timeout": config.timeout_seconds,
            "synchronous": "true",
        }
    )


def describe_ready(document) -> bool:
    """True if MMS's describe-model answer shows at least one worker READY."""
    models = document if isinstance(document, list) else [document]
    return any(w.get("status") == "READY" for m in models if isinstance(m, dict) for w in m.get("workers", []))


def error_message(body: bytes, fallback: str) -> str:
    try:
        document = json.loads(body)
    except ValueError:
        return fallback
    if isinstance(document, dict):
        return str(document.get("error") or document.get("message") or fallback)
    return fallback
