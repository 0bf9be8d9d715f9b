"""The real image, built from the real Dockerfile, run as SageMaker runs it."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
import requests

from local.sample_data import write_config
from tests.helpers import DIGITS_HPS, REPO_ROOT, free_port

pytestmark = [pytest.mark.container, pytest.mark.slow]


def _job(tmp_path: Path, digits_data: Path, hps: dict, pretrained: Path | None = None) -> Path:
    """A self-contained /opt/ml (real copies, no symlinks: it is mounted into a container)."""
    base = tmp_path / "opt_ml"
    for split in ("train", "validation", "test"):
        shutil.copytree(digits_data / split, base / "input" / "data" / split)
    channels = ["train", "validation", "test"]
    if pretrained is not None:
        (base / "input" / "data" / "pretrained").mkdir()
        shutil.copy(pretrained, base / "input" / "data" / "pretrained")
        channels.append("pretrained")
    write_config(base, hps, channels)
    return base


def test_train_in_the_container_writes_the_artifact(engine, image, tmp_path, digits_data):
    base = _job(tmp_path, digits_data, {**DIGITS_HPS, "epochs": "1"})
    result = engine.docker("run", "--rm", "-v", f"{base}:/opt/ml", image, "train", timeout=900)
    assert "event=final" in result.stdout
    card = json.loads((base / "model" / "model_card.json").read_text())
    assert card["architecture"] == "resnet18" and (base / "model" / "model.safetensors").exists()
    assert (base / "output" / "data" / "training_report.html").exists() and not (base / "output" / "failure").exists()


def test_train_with_network_isolation_and_a_pretrained_channel(engine, image, tmp_path, digits_data, lite0_weights):
    hps = {"model": "tf_efficientnet_lite0", "image_size": "32", "epochs": "1", "batch_size": "64", "num_workers": "1"}
    base = _job(tmp_path, digits_data, hps, pretrained=lite0_weights)
    result = engine.docker("run", "--rm", "--network", "none", "-v", f"{base}:/opt/ml", image, "train", timeout=900)
    assert "event=pretrained_loaded source=channel" in result.stdout
    assert (base / "model" / "model.safetensors").exists()


def test_a_failed_job_leaves_its_reason(engine, image, tmp_path, digits_data):
    base = _job(tmp_path, digits_data, {**DIGITS_HPS, "pretrained": "true"})
    result = engine.docker("run", "--rm", "--network", "none", "-v", f"{base}:/opt/ml", image, "train", check=False, timeout=300)
    assert result.returncode == 1
    assert "pretrained weights for 'resnet18' requested but none found" in (base / "output" / "failure").read_text()


def test_weights_baked_at_build_time_train_without_a_channel(engine, image, build_args, tmp_path, digits_data, lite0_weights):
    folder = REPO_ROOT / "build" / "test-pretrained"
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(lite0_weights, folder / "tf_efficientnet_lite0.safetensors")
    try:
        args = [*build_args, "--build-arg", "PRETRAINED_DIR=build/test-pretrained"]
        engine.docker("build", "--network", "host", *args, "-t", "image-classifier:baked", str(REPO_ROOT), timeout=1800)
    finally:
        shutil.rmtree(REPO_ROOT / "build", ignore_errors=True)
    hps = {"model": "tf_efficientnet_lite0", "image_size": "32", "epochs": "1", "batch_size": "64", "num_workers": "1"}
    base = _job(tmp_path, digits_data, hps)
    result = engine.docker("run", "--rm", "--network", "none", "-v", f"{base}:/opt/ml", "image-classifier:baked", "train", timeout=900)
    assert "event=pretrained_loaded source=baked:/opt/pretrained/tf_efficientnet_lite0.safetensors" in result.stdout
    engine.docker("rmi", "image-classifier:baked", check=False)


def _wait_ping(url: str, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if requests.get(f"{url}/ping", timeout=2).status_code == 200:
                return
        except requests.ConnectionError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"{url}/ping never answered 200")


def test_serve_answers_and_stops_cleanly(engine, image, digits_job, sample_images, tmp_path):
    model = tmp_path / "opt_ml" / "model"
    shutil.copytree(digits_job[0] / "model", model)
    port = free_port()
    container = engine.docker(
        "run", "-d", "-p", f"127.0.0.1:{port}:8080", "-v", f"{model.parent}:/opt/ml:ro", image, "serve"
    ).stdout.strip()
    try:
        _wait_ping(f"http://127.0.0.1:{port}")
        response = requests.post(
            f"http://127.0.0.1:{port}/invocations", data=sample_images["jpeg"], headers={"Content-Type": "image/jpeg"}, timeout=30
        )
        assert response.status_code == 200 and response.json()["predictions"][0]["label"].startswith("digit_")
        started = time.monotonic()
        engine.docker("stop", "-t", "30", container, timeout=60)
        assert time.monotonic() - started < 25  # SIGTERM handled, not the SIGKILL at 30 s
        assert engine.docker("inspect", "-f", "{{.State.ExitCode}}", container).stdout.strip() == "0"
        assert "event=mms_stopped" in engine.docker("logs", container).stdout
    finally:
        engine.docker("rm", "-f", container, check=False)


def test_compose_trains_then_serves(engine, image, tmp_path, digits_data, sample_images):
    project = tmp_path / "project"
    project.mkdir()
    for name in ("docker-compose.yml", "docker-compose.cpu.yml"):
        shutil.copy(REPO_ROOT / name, project / name)
    (project / "Dockerfile").write_text("FROM scratch\n")  # never built: the image exists
    opt_ml = _job(tmp_path, digits_data, {**DIGITS_HPS, "epochs": "1"})
    (project / "local").mkdir()
    shutil.move(str(opt_ml), project / "local" / "opt_ml")
    compose = ["compose", "-p", "ictest", "-f", "docker-compose.yml", "-f", "docker-compose.cpu.yml"]
    try:
        engine.docker(*compose, "up", "-d", "--no-build", cwd=project, timeout=900)
        _wait_ping("http://127.0.0.1:8080", timeout=600)
        train_state = engine.docker(*compose, "ps", "-a", "--format", "json", "train", cwd=project).stdout
        assert '"ExitCode":0' in train_state.replace(" ", "")
        response = requests.post(
            "http://127.0.0.1:8080/invocations", data=sample_images["png"], headers={"Content-Type": "image/png"}, timeout=30
        )
        assert response.status_code == 200 and "predictions" in response.json()
        assert (project / "local" / "opt_ml" / "model" / "model.safetensors").exists()
    finally:
        engine.docker(*compose, "down", "--remove-orphans", cwd=project, check=False, timeout=300)
    assert engine.docker("ps", "-aq", "--filter", "label=com.docker.compose.project=ictest").stdout.strip() == ""
