"""Static checks of the image's files: hadolint, shellcheck, and Compose v2's own validation."""

from __future__ import annotations

import json
import re
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


def _shell_scripts() -> list[Path]:
    tracked = _run("git", "ls-files", "*.sh", ".ci/run").stdout.split()
    scripts = sorted(REPO_ROOT / name for name in tracked)
    assert {REPO_ROOT / "local" / "invoke.sh", REPO_ROOT / "deploy" / "push_and_train.sh", REPO_ROOT / ".ci" / "run"} <= set(scripts)
    return scripts


def test_every_shell_script_passes_shellcheck():
    assert shutil.which("shellcheck"), "shellcheck is installed by make / .ci/run"
    result = _run("shellcheck", *map(str, _shell_scripts()))
    assert result.returncode == 0, result.stdout


# a pipeline stage that stops reading before its writer is done: the writer dies of SIGPIPE, and under
# ``set -o pipefail`` the pipeline fails with status 141 (``set -e`` then ends the script without a word)
EARLY_READER = re.compile(r"\|\s*(head\b|grep\s+(-\w*[qlm]|--quiet|--max-count)|sed\s+(-\w+\s+)*'?\S*q\b|awk\b[^|]*\bexit\b)")


def test_no_pipeline_ends_in_a_reader_that_stops_early():
    """``find | sort | head -n 1`` died with 141 on a test folder of 3,000 files (local/invoke.sh)."""
    assert EARLY_READER.search("find . | sort | head -n 1") and EARLY_READER.search("docker images | grep -q x")
    assert not EARLY_READER.search("find . | sort | sed -n 1p") and not EARLY_READER.search("ls | awk '{print}'")
    offenders = [
        f"{path.relative_to(REPO_ROOT)}:{number}: {line.strip()}"
        for path in [*_shell_scripts(), REPO_ROOT / "Makefile"]
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if not line.lstrip().startswith("#") and EARLY_READER.search(line)
    ]
    assert offenders == []


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
