"""A real Docker engine for the container tier, started and stopped by the tests themselves.

No registry is reachable here, so the base image is a local stand-in for
``python:3.11-slim-bookworm`` (debootstrap'd Debian bookworm + python3, without torch, cached by
recipe between runs on the same machine). This machine's folder of wheels is served on
127.0.0.1 to the build, so the Dockerfile's own pinned install line runs for real without
downloading gigabytes of torch again.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import http.server
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path

CACHE = Path(os.environ.get("IMAGE_CLASSIFIER_TEST_CACHE", "/var/lib/image-classifier-tests"))
BASE_RECIPE = """FROM {minbase}
RUN apt-get update && apt-get install -y --no-install-recommends python3 python3-venv python3-pip python3-dev ca-certificates \\
 && rm -rf /var/lib/apt/lists/* && ln -s /usr/bin/python3 /usr/local/bin/python
COPY host-ca.crt /etc/ssl/certs/host-ca-bundle.crt
ENV PIP_CERT=/etc/ssl/certs/host-ca-bundle.crt PIP_DISABLE_PIP_VERSION_CHECK=1
"""
HOST_CA = Path(os.environ.get("PIP_CERT") or "/etc/ssl/certs/ca-certificates.crt")


def run(command: list[str], env: dict[str, str], timeout: float = 600, check: bool = True, **kw) -> subprocess.CompletedProcess:
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout, **kw)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(command)} failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


class DockerEngine:
    """dockerd on its own socket, data root and exec root; removed containers on stop."""

    def __init__(self) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="ic-dockerd-"))
        self.socket = self.tmp / "docker.sock"
        self.env = {**os.environ, "DOCKER_HOST": f"unix://{self.socket}", "DOCKER_BUILDKIT": "0", "DOCKER_CONFIG": str(self.tmp / "config")}
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 90) -> None:
        for tool in ("dockerd", "debootstrap"):
            if not shutil.which(tool):
                raise AssertionError(f"{tool} is missing: .ci/run installs docker.io and debootstrap")
        (CACHE / "docker").mkdir(parents=True, exist_ok=True)
        self.log = open(self.tmp / "dockerd.log", "w")
        self.process = subprocess.Popen(
            [
                "dockerd", "--storage-driver=overlay2", "--iptables=false", "--ip6tables=false",
                f"--data-root={CACHE / 'docker'}", f"--exec-root={self.tmp / 'exec'}", f"--pidfile={self.tmp / 'docker.pid'}",
                "-H", f"unix://{self.socket}",
            ],
            stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"dockerd exited:\n{(self.tmp / 'dockerd.log').read_text()[-3000:]}")
            with contextlib.suppress(subprocess.TimeoutExpired):
                if run(["docker", "version"], self.env, check=False, timeout=10).returncode == 0:
                    break
            time.sleep(0.5)
        else:
            raise AssertionError("dockerd did not answer")
        plugins = self.tmp / "config" / "cli-plugins"
        plugins.mkdir(parents=True)
        (plugins / "docker-compose").symlink_to(Path(__import__("compose").__file__).parent / "docker-compose")

    def docker(self, *args: str, timeout: float = 600, check: bool = True, **kw) -> subprocess.CompletedProcess:
        return run(["docker", *args], self.env, timeout=timeout, check=check, **kw)

    def stop(self) -> None:
        if self.process is None:
            return
        ids = self.docker("ps", "-aq", check=False).stdout.split()
        if ids:
            self.docker("rm", "-f", *ids, check=False)
        self.docker("image", "prune", "-f", check=False)
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
        self.log.close()
        shutil.rmtree(self.tmp, ignore_errors=True)


def _debian_mirror() -> str:
    for source in [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*.sources"))]:
        if source.exists():
            for line in source.read_text().splitlines():
                words = line.split()
                if line.startswith("URIs:") and "security" not in line:
                    return words[1]
                if line.startswith("deb ") and "security" not in line:
                    return words[1]
    return "http://deb.debian.org/debian"


def base_image(engine: DockerEngine) -> str:
    """The stand-in for python:3.11-slim-bookworm, keyed by its recipe; built once per machine."""
    ca = HOST_CA.read_bytes()
    key = hashlib.sha256(BASE_RECIPE.encode() + ca).hexdigest()[:12]
    tag = f"ic-python-base:{key}"
    if engine.docker("image", "inspect", tag, check=False).returncode == 0:
        return tag
    minbase = "ic-debian-minbase:bookworm"
    if engine.docker("image", "inspect", minbase, check=False).returncode != 0:
        rootfs = Path(tempfile.mkdtemp(prefix="ic-rootfs-"))
        try:
            run(["debootstrap", "--variant=minbase", "bookworm", str(rootfs), _debian_mirror()], os.environ.copy(), timeout=900)
            tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
            engine.docker("import", "-", minbase, stdin=tar.stdout, timeout=600)
            tar.wait()
        finally:
            shutil.rmtree(rootfs, ignore_errors=True)
    context = Path(tempfile.mkdtemp(prefix="ic-base-"))
    try:
        (context / "Dockerfile").write_text(BASE_RECIPE.format(minbase=minbase))
        (context / "host-ca.crt").write_bytes(ca)
        engine.docker("build", "--network", "host", "-t", tag, str(context), timeout=900)
    finally:
        shutil.rmtree(context, ignore_errors=True)
    return tag


def local_wheel_dir() -> Path | None:
    """The folder on this machine that holds the pinned torch wheel, if any."""
    candidates = [Path(p) for p in os.environ.get("PIP_FIND_LINKS", "").split()]
    listed = run(["python3", "-m", "pip", "config", "list"], os.environ.copy(), check=False).stdout
    for line in listed.splitlines():
        for word in line.split("=", 1)[-1].strip("'\" ").split():
            path = Path(word.removeprefix("file://"))
            candidates += [path, path.parent / "files"]
    for folder in candidates:
        if folder.is_dir() and any(folder.glob("torch-2.14.1-*.whl")):
            return folder
    return None


@contextlib.contextmanager
def serve_folder(folder: Path | None):
    """``python -m http.server`` on 127.0.0.1 for the build's --find-links (none: yields "")."""
    if folder is None:
        yield ""
        return
    handler = functools.partial(_QuietHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass
