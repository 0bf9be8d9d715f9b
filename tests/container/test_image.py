"""The real image, built from the real Dockerfile, run as SageMaker runs it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import requests

from local.sample_data import FASHION_CLASSES, write_config
from tests.container.conftest import BUILD_FACTS
from tests.helpers import DIGITS_HPS, REPO_ROOT, free_port, fresh_copy
from tests.readme import script

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


def test_compose_up_on_a_fresh_clone_trains_the_built_in_sample_and_serves(engine, image, build_args, tmp_path):
    """The README's "compose" block, as written, in a fresh copy: build, train the built-in sample, serve, query."""
    project = fresh_copy(tmp_path / "clone")
    opt_ml = project / "local" / "opt_ml"
    assert sorted(p.name for p in opt_ml.iterdir()) == ["README.md"]
    os.chown(opt_ml, 4321, 4321)  # the user who cloned it (the tests run as root)
    given = dict(arg.split("=", 1) for arg in build_args if "=" in arg)
    env = {
        **engine.env,
        "COMPOSE_PROJECT_NAME": "icfresh",
        "IC_BASE_IMAGE": given["BASE_IMAGE"],
        "IC_PIP_FIND_LINKS": given["PIP_FIND_LINKS"],
    }
    try:
        ran = subprocess.run(["bash", "-c", script("compose")], cwd=project, env=env, capture_output=True, text=True, timeout=1800)
        assert ran.returncode == 0, ran.stdout[-3000:] + ran.stderr[-3000:]
    finally:
        subprocess.run(["docker", "compose", "down", "--remove-orphans"], cwd=project, env=env, capture_output=True, timeout=300)
    answer = json.loads(ran.stdout.strip().splitlines()[-1])  # local/invoke.sh's answer
    assert answer["predictions"][0]["label"] in FASHION_CLASSES and len(answer["predictions"][0]["top_k"]) == 5
    seeded = sorted(p.name for p in (opt_ml / "input" / "data" / "train").iterdir())
    assert seeded == sorted(FASHION_CLASSES)  # the built-in sample, copied in because ./local/opt_ml held no data
    written = [p for p in opt_ml.rglob("*") if p.name != "README.md"]
    assert (opt_ml / "model" / "model.safetensors") in written
    assert {p.stat().st_uid for p in written} == {4321}  # handed back: `make local-data` as the user can remove them
    assert engine.docker("ps", "-aq", "--filter", "label=com.docker.compose.project=icfresh").stdout.strip() == ""
    sizes = {
        tag: int(engine.docker("image", "inspect", tag, "--format", "{{.Size}}").stdout) for tag in (image, "image-classifier:compose")
    }
    BUILD_FACTS["compose_image_extra_mb"] = round((sizes["image-classifier:compose"] - sizes[image]) / 1e6, 1)
    assert sizes["image-classifier:compose"] - sizes[image] < 30e6  # the sample adds ~20 MB, to the compose image only
    assert "sample" not in engine.docker("run", "--rm", "--entrypoint", "ls", image, "/opt").stdout.split()  # production: no sample


def test_train_and_serve_refuse_a_gpu_they_cannot_use(engine, image, tmp_path, digits_data, digits_job):
    """A GPU is expected (SM_NUM_GPUS, or an NVIDIA device node) and CUDA cannot be used: stop, never the CPU."""
    base = _job(tmp_path, digits_data, {**DIGITS_HPS, "epochs": "1"})
    device = ["--device", "/dev/null:/dev/nvidia0"]  # a device node and no driver: what a broken host shows
    trained = engine.docker(
        "run", "--rm", *device, "-e", "SM_NUM_GPUS=1", "-v", f"{base}:/opt/ml", image, "train", check=False, timeout=300
    )
    assert trained.returncode == 1, trained.stdout[-2000:] + trained.stderr[-2000:]
    assert "event=cuda_host mode=unusable driver=none" in trained.stderr
    reason = (base / "output" / "failure").read_text()
    assert reason.startswith(
        "a GPU is expected (SM_NUM_GPUS=1) but CUDA cannot be used: 1 NVIDIA device(s) visible but no NVIDIA driver"
    ), reason
    assert not (base / "model" / "model.safetensors").exists()

    model = tmp_path / "serve" / "model"
    shutil.copytree(digits_job[0] / "model", model)
    served = engine.docker("run", "--rm", *device, "-v", f"{model.parent}:/opt/ml:ro", image, "serve", check=False, timeout=120)
    assert served.returncode == 1
    assert "event=serve_failed reason=a_GPU_is_expected_(NVIDIA_device(s)_visible:_/dev/nvidia0)" in served.stdout + served.stderr
