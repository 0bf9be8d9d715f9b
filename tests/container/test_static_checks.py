"""Static checks of the image's files: hadolint, shellcheck, and Compose v2's own validation."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.helpers import REPO_ROOT, VENV_BIN

COMPOSE = Path(__import__("compose").__file__).parent / "docker-compose"


def _run(*command: str) -> subprocess.CompletedProcess:
    return subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True)


def test_hadolint_passes():
    result = _run(str(VENV_BIN / "hadolint"), "Dockerfile")
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_catches_a_planted_mistake(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:3.11-slim\nRUN cd /tmp && pip install torch\nCMD serve\n")
    result = _run(str(VENV_BIN / "hadolint"), "--config", str(REPO_ROOT / ".hadolint.yaml"), str(bad))
    assert result.returncode != 0 and "DL3003" in result.stdout and "DL3025" in result.stdout


def test_every_shell_script_passes_shellcheck():
    assert shutil.which("shellcheck"), "shellcheck is installed by make / .ci/run"
    scripts = sorted({*REPO_ROOT.glob("**/*.sh"), REPO_ROOT / ".ci" / "run"} - set(REPO_ROOT.glob(".venv/**/*")))
    assert {REPO_ROOT / "local" / "invoke.sh", REPO_ROOT / "deploy" / "push_and_train.sh"} <= set(scripts)
    result = _run("shellcheck", *map(str, scripts))
    assert result.returncode == 0, result.stdout


@pytest.mark.parametrize("file", ["docker-compose.yml", "docker-compose.gpu.yml"])
def test_compose_files_are_valid(file):
    result = _run(str(COMPOSE), "-f", file, "config", "--format", "json")
    assert result.returncode == 0, result.stderr
    config = json.loads(result.stdout)
    train, serve = config["services"]["train"], config["services"]["serve"]
    assert serve["depends_on"]["train"]["condition"] == "service_completed_successfully"
    assert serve["ports"][0]["host_ip"] == "127.0.0.1" and serve["ports"][0]["target"] == 8080
    assert any(v["target"] == "/opt/ml" for v in train["volumes"])
    assert train["build"]["target"] == "local" and train["image"] == serve["image"] == "image-classifier:compose"
    assert train["environment"]["IMAGE_CLASSIFIER_SAMPLE_DIR"] == "/opt/sample"  # compose asks for the sample, nothing else does
    gpu = all("deploy" in s and "nvidia" in json.dumps(s["deploy"]) for s in (train, serve))
    assert gpu == (file == "docker-compose.gpu.yml")  # one flag adds the GPUs; the default runs anywhere


def test_the_sample_weights_package_is_pinned_as_in_the_test_lock():
    pinned = next(
        line for line in (REPO_ROOT / "tests" / "requirements.lock").read_text().splitlines() if line.startswith("efficientnet-lite0")
    )
    sample = [line for line in (REPO_ROOT / "docker" / "sample-requirements.txt").read_text().splitlines() if not line.startswith("#")]
    assert sample == [pinned]


def test_the_default_build_target_is_the_production_image():
    stages = [line.split() for line in (REPO_ROOT / "Dockerfile").read_text().splitlines() if line.startswith("FROM ")]
    assert stages[-1] == ["FROM", "runtime"]  # no sample, whatever stages come before
    assert ["FROM", "runtime", "AS", "local"] in stages
