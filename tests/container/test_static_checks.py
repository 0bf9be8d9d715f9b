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


@pytest.mark.parametrize("files", [["docker-compose.yml"], ["docker-compose.yml", "docker-compose.cpu.yml"]])
def test_compose_files_are_valid(files):
    args = [a for f in files for a in ("-f", f)]
    result = _run(str(COMPOSE), *args, "config", "--format", "json")
    assert result.returncode == 0, result.stderr
    config = json.loads(result.stdout)
    train, serve = config["services"]["train"], config["services"]["serve"]
    assert serve["depends_on"]["train"]["condition"] == "service_completed_successfully"
    assert serve["ports"][0]["host_ip"] == "127.0.0.1" and serve["ports"][0]["target"] == 8080
    assert any(v["target"] == "/opt/ml" for v in train["volumes"])
    gpu = "deploy" in train and "nvidia" in json.dumps(train["deploy"])
    assert gpu == (files == ["docker-compose.yml"])  # the CPU override drops the reservation
