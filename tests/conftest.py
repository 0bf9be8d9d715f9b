"""Shared fixtures and the suite's own rules.

- Session-wide fixtures build each data set and train each reference model once.
- Per-tier wall time (unit, contract, container, aws, gpu) is printed at the end.
- Under ``CI=true`` a skipped test outside the gpu tier fails the run: a skip there means an
  install step is missing, not that the feature is optional.
"""

from __future__ import annotations

import collections
import os
from pathlib import Path

import pytest

from tests.helpers import REPO_ROOT, run_train

_TIER_SECONDS: dict[str, float] = collections.defaultdict(float)
_BAD_SKIPS: list[str] = []


def _tier(nodeid: str) -> str:
    parts = nodeid.split("/")
    return parts[1] if len(parts) > 2 and parts[0] == "tests" else "other"


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    _TIER_SECONDS[_tier(report.nodeid)] += report.duration
    if report.skipped and os.environ.get("CI") == "true" and _tier(report.nodeid) != "gpu" and "gpu" not in report.keywords:
        _BAD_SKIPS.append(report.nodeid)


def pytest_terminal_summary(terminalreporter) -> None:
    terminalreporter.section("time per tier")
    for tier, seconds in sorted(_TIER_SECONDS.items()):
        terminalreporter.write_line(f"tier={tier} seconds={seconds:.1f}")
    if _BAD_SKIPS:
        terminalreporter.section("skipped under CI=true (fails the run)")
        for nodeid in _BAD_SKIPS:
            terminalreporter.write_line(nodeid)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _BAD_SKIPS and session.exitstatus == 0:
        session.exitstatus = 1


@pytest.fixture(scope="session")
def engine():
    """One Docker engine per session, shared by the container tier and the push test in tests/aws."""
    from tests.container.engine import DockerEngine

    engine = DockerEngine()
    engine.start()
    yield engine
    engine.stop()


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def digits_data(tmp_path_factory) -> Path:
    """Digits as class folders, with a few formats mixed in and two unreadable files planted."""
    from tests.helpers import make_digits_with_formats

    return make_digits_with_formats(tmp_path_factory.mktemp("digits"))


@pytest.fixture(scope="session")
def fashion_data(tmp_path_factory) -> Path:
    from local.sample_data import write_fashion

    return write_fashion(tmp_path_factory.mktemp("fashion"), train_per_class=200, valid_per_class=40, test_per_class=100, seed=1)


@pytest.fixture(scope="session")
def lite0_weights(tmp_path_factory) -> Path:
    """The offline EfficientNet-Lite0 ImageNet weights, converted to timm names (a user's file)."""
    from local.convert_weights import convert

    return convert(tmp_path_factory.mktemp("weights") / "tf_efficientnet_lite0.safetensors")


@pytest.fixture(scope="session")
def digits_job(tmp_path_factory, digits_data):
    """One real training run shared by the artifact, metric, report and check tests."""
    from tests.helpers import DIGITS_HPS

    base = tmp_path_factory.mktemp("digits_job")
    result = run_train(base, digits_data, DIGITS_HPS)
    assert result.returncode == 0, result.stdout[-4000:]
    return base, result


@pytest.fixture(scope="session")
def script_job(tmp_path_factory, digits_data):
    """A user's own training script (tests/user_script/train.py) run by `train` in script mode."""
    from tests.helpers import script_mode_hps

    base = tmp_path_factory.mktemp("script_job")
    result = run_train(base, digits_data, script_mode_hps())
    assert result.returncode == 0, result.stdout[-4000:]
    return base, result


@pytest.fixture(scope="session")
def digits5_job(tmp_path_factory):
    """A second, differently trained model (5 classes) for the multi-model endpoint."""
    from local.sample_data import write_digits
    from tests.helpers import DIGITS_HPS

    data = write_digits(tmp_path_factory.mktemp("digits5-data"), classes=5)
    base = tmp_path_factory.mktemp("digits5_job")
    result = run_train(base, data, {**DIGITS_HPS, "epochs": "2", "image_size": "24"})
    assert result.returncode == 0, result.stdout[-4000:]
    return base


@pytest.fixture(scope="session")
def sample_images(digits_data) -> dict[str, bytes]:
    """Real test images of the digits model, encoded as each content type sends them."""
    import io

    from PIL import Image

    source = sorted((digits_data / "test" / "digit_7").glob("*.png"))[0]
    image = Image.open(source).convert("RGB").resize((64, 64))
    out = {}
    for fmt in ("JPEG", "PNG", "WEBP"):
        buffer = io.BytesIO()
        image.save(buffer, format=fmt)
        out[fmt.lower()] = buffer.getvalue()
    return out
