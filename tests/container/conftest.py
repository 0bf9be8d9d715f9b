"""Session fixtures of the container tier: the base stand-in and the built image (the engine: tests/conftest.py)."""

from __future__ import annotations

import json
import time

import pytest

from tests.container.engine import base_image, local_wheel_dir, serve_folder
from tests.helpers import REPO_ROOT

IMAGE = "image-classifier:local"  # the tag docker-compose.yml uses
BUILD_FACTS: dict[str, float | str] = {}


@pytest.fixture(scope="session")
def build_args(engine):
    """BASE_IMAGE and PIP_FIND_LINKS, the same for every build of the session (layer cache)."""
    base = base_image(engine)
    with serve_folder(local_wheel_dir()) as find_links:
        yield ["--build-arg", f"BASE_IMAGE={base}", "--build-arg", f"PIP_FIND_LINKS={find_links}"]


@pytest.fixture(scope="session")
def image(engine, build_args) -> str:
    started = time.monotonic()
    engine.docker("build", "--network", "host", *build_args, "-t", IMAGE, str(REPO_ROOT), timeout=1800)
    BUILD_FACTS["build_seconds"] = round(time.monotonic() - started, 1)
    size = int(engine.docker("image", "inspect", IMAGE, "--format", "{{.Size}}").stdout.strip())
    BUILD_FACTS["image_gb"] = round(size / 1e9, 2)
    return IMAGE  # dangling builder-stage layers are pruned when the engine stops, not before: later builds reuse them


def pytest_terminal_summary(terminalreporter) -> None:
    if BUILD_FACTS:
        terminalreporter.section("image")
        terminalreporter.write_line("image " + json.dumps(BUILD_FACTS))
