"""GPU variants of the container tier (`local_gpu`, `--gpus all`): run wherever an NVIDIA GPU
and the NVIDIA container toolkit are present; deselected by `make test` (marker gpu)."""

from __future__ import annotations

import shutil

import pytest

from local.sample_data import write_config
from tests.helpers import DIGITS_HPS

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.container,
    pytest.mark.skipif(shutil.which("nvidia-smi") is None, reason="needs an NVIDIA GPU and driver"),
]


def test_train_on_the_gpu_in_the_container(engine, image, tmp_path, digits_data):
    base = tmp_path / "opt_ml"
    for split in ("train", "validation", "test"):
        shutil.copytree(digits_data / split, base / "input" / "data" / split)
    write_config(base, {**DIGITS_HPS, "epochs": "2", "amp": "auto"}, ["train", "validation", "test"])
    result = engine.docker("run", "--rm", "--gpus", "all", "-v", f"{base}:/opt/ml", image, "train", timeout=900)
    assert "device=cuda:0" in result.stdout and "event=final" in result.stdout


def test_local_gpu_mode_fit(engine, image, digits_data, tmp_path):
    from tests.container.test_local_mode import _local_mode

    out = _local_mode(engine, digits_data, tmp_path / "out", 1, False, {**DIGITS_HPS, "epochs": "1"}, instance_type="local_gpu")
    assert "device=cuda:0" in out
