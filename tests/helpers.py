"""Helpers the tiers share: running ``train`` as SageMaker does, and building test data."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent

# A small but real configuration: timm ResNet-18 from scratch on 32 px digits.
DIGITS_HPS = {
    "model": "resnet18",
    "pretrained": "false",
    "image_size": "32",
    "epochs": "3",
    "batch_size": "64",
    "lr": "0.003",
    "augment": "light",
    "log_interval": "5",
    "num_workers": "1",
    "seed": "7",
}


USER_SCRIPT_DIR = REPO_ROOT / "tests" / "user_script"  # a user's train.py, inference.py, requirements.txt


def script_mode_hps(**extra: str) -> dict[str, str]:
    """What the SDK's ``PyTorch(entry_point="train.py", source_dir=...)`` writes: every value JSON-encoded."""
    given = {"greeting": "hello", **extra}
    return {
        "sagemaker_program": json.dumps("train.py"),
        "sagemaker_submit_directory": json.dumps(str(USER_SCRIPT_DIR)),
        **{k: v if k.startswith("sagemaker_") else json.dumps(v) for k, v in given.items()},
    }


def train_env(base: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SM_")}
    env.update(
        {
            "SAGEMAKER_BASE_DIR": str(base),
            "PATH": f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}",
            "IMAGE_CLASSIFIER_PRETRAINED_DIR": str(base / "no-baked-weights"),
            "HF_HUB_OFFLINE": "1",
            "TORCH_HOME": str(base / "torch-home"),
            "HF_HOME": str(base / "hf-home"),
        }
    )
    env.update(extra or {})
    return env


def write_job(
    base: Path, data: Path | None, hyperparameters: dict[str, str], channels: dict[str, Path] | None = None, hosts=("algo-1",)
) -> Path:
    from local.sample_data import write_job as layout

    if data is not None:
        layout(base, data, hyperparameters, hosts)
    else:
        layout(base, _empty(base), hyperparameters, hosts)
    for name, path in (channels or {}).items():
        link = base / "input" / "data" / name
        if link.is_symlink() or link.exists():
            link.unlink() if link.is_symlink() else shutil.rmtree(link)
        link.symlink_to(path, target_is_directory=True)
    return base


def _empty(base: Path) -> Path:
    folder = base / "empty-data"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def run_train(
    base: Path, data: Path | None, hyperparameters: dict[str, str], *, channels=None, hosts=("algo-1",), env=None, args=(), timeout=900
):
    write_job(base, data, hyperparameters, channels, hosts)
    return subprocess.run(
        ["train", *args],
        env=train_env(base, env),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout,
        cwd=base,
    )


def fresh_copy(dest: Path, *, with_venv: bool = False) -> Path:
    """The repository as a fresh clone has it: tracked and unignored files (modes and times kept).

    ``with_venv`` links this checkout's ``.venv`` in, so that ``make`` finds it installed."""
    listed = subprocess.run(
        ["git", "-C", str(REPO_ROOT), "ls-files", "-z", "--cached", "--others", "--exclude-standard"], capture_output=True, check=True
    ).stdout
    for name in filter(None, listed.decode().split("\0")):
        source = REPO_ROOT / name
        if source.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)
    if with_venv:
        (dest / ".venv").symlink_to(REPO_ROOT / ".venv")
        # this checkout's venv stands for the copy's: make must not take the copy's locks for newer than it
        stamp = (REPO_ROOT / ".venv" / ".installed").stat().st_mtime
        for name in ("docker/requirements.lock", "deploy/requirements.lock", "tests/requirements.lock", "container/pyproject.toml"):
            os.utime(dest / name, (stamp - 1, stamp - 1))
    return dest


def failure_reason(base: Path) -> str:
    return (base / "output" / "failure").read_text().strip()


def read_json(path: Path):
    return json.loads(path.read_text())


def make_digits_with_formats(dest: Path) -> Path:
    """Digits in class folders, some re-encoded as CMYK JPEG, RGBA PNG, WebP, palette GIF,
    16-bit PNG and EXIF-rotated JPEG, plus one truncated and one garbage file (counted, skipped)."""
    from local.sample_data import write_digits

    write_digits(dest)
    train = sorted((dest / "train").rglob("*.png"))
    for i, path in enumerate(train[:60]):
        image = Image.open(path).convert("L")
        kind = i % 6
        if kind == 0:
            image.convert("CMYK").save(path.with_suffix(".jpg"), quality=95)
        elif kind == 1:
            rgba = image.convert("RGBA")
            rgba.putalpha(255)
            rgba.save(path.with_name(path.stem + "_rgba.png"))
        elif kind == 2:
            image.convert("RGB").save(path.with_suffix(".webp"))
        elif kind == 3:
            image.convert("P").save(path.with_suffix(".gif"))
        elif kind == 4:
            Image.fromarray(np.asarray(image).astype(np.uint16) * 257).save(path.with_name(path.stem + "_16.png"))
        else:
            exif = Image.Exif()
            exif[0x0112] = 6  # rotated 90 degrees
            image.rotate(90, expand=True).convert("RGB").save(path.with_suffix(".jpeg"), exif=exif.tobytes())
        path.unlink()
    first_class = sorted((dest / "train").iterdir())[0]
    good = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 10, 10)).save(good, format="PNG")
    (first_class / "truncated.png").write_bytes(good.getvalue()[:80])
    (first_class / "garbage.jpg").write_bytes(b"this is not a jpeg at all" * 10)
    (first_class / "README.txt").write_text("not an image, ignored")
    return dest


def free_port() -> int:
    """A free port below 32768: multi-model-server refuses ephemeral-range port numbers."""
    import random
    import socket

    while True:
        port = random.randint(20000, 32000)
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            with socket.socket() as neighbour:
                try:
                    neighbour.bind(("127.0.0.1", port + 1))
                except OSError:
                    continue
            return port


class ServeProcess:
    """``serve`` as a real process (front + multi-model-server + workers) on 127.0.0.1."""

    def __init__(self, base: Path, tmp: Path, *, own_group: bool = False, **env: str):
        """``own_group``: serve leads a process group of its own, so a test can signal the whole group (Ctrl-C)."""
        import subprocess

        self.port = free_port()
        self.mms_port = free_port()
        while abs(self.mms_port - self.port) < 2:
            self.mms_port = free_port()
        self.tmp = tmp
        tmp.mkdir(parents=True, exist_ok=True)
        self.log_path = tmp / "serve.log"
        full_env = train_env(base)
        full_env.update(
            {"SAGEMAKER_BIND_TO_PORT": str(self.port), "IMAGE_CLASSIFIER_MMS_PORT": str(self.mms_port), "TMPDIR": str(tmp), **env}
        )
        self._log = open(self.log_path, "w")
        self.process = subprocess.Popen(
            ["serve"], env=full_env, stdout=self._log, stderr=subprocess.STDOUT, cwd=tmp, start_new_session=own_group
        )
        self.url = f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text()

    def wait_ready(self, timeout: float = 180.0) -> list[int]:
        """Poll /ping until 200; return every status seen on the way."""
        import time

        import requests

        seen = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"serve exited with {self.process.returncode}:\n{self.log()[-3000:]}")
            try:
                status = requests.get(f"{self.url}/ping", timeout=2).status_code
            except requests.ConnectionError:
                status = 0
            seen.append(status)
            if status == 200:
                return seen
            time.sleep(0.05)
        raise AssertionError(f"not ready after {timeout}s:\n{self.log()[-3000:]}")

    def stop(self, timeout: float = 30.0) -> int:
        import signal

        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(timeout=timeout)
        self._log.close()
        return self.process.returncode
