"""Checkpoint writes that the storage refuses: a full (tiny) filesystem and a read-only folder.

Real mounts (the suite runs as root, as CI does): a 256 KiB tmpfs, and a read-only bind mount
(root ignores file permissions, so ``chmod`` would prove nothing).
"""

from __future__ import annotations

import errno
import logging
import subprocess
from pathlib import Path

import pytest
import torch

from image_classifier.model_card import save_weights
from image_classifier.training.checkpoints import list_checkpoints, load_latest, save_checkpoint, write_or_warn


def _mount(*args: str) -> None:
    subprocess.run(["mount", *args], check=True, capture_output=True)


@pytest.fixture
def tiny_fs(tmp_path):
    folder = tmp_path / "tiny"
    folder.mkdir()
    _mount("-t", "tmpfs", "-o", "size=256k", "tmpfs", str(folder))
    yield folder
    subprocess.run(["umount", str(folder)], check=True)


@pytest.fixture
def read_only(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    save_checkpoint({"epoch": 1, "w": torch.ones(3)}, folder, 1, 0)
    _mount("--bind", str(folder), str(folder))
    _mount("-o", "remount,bind,ro", str(folder))
    yield folder
    subprocess.run(["umount", str(folder)], check=True)


def _intact(folder: Path, value: float) -> None:
    assert [p.name for p in folder.iterdir()] == ["checkpoint-0001-000000.pt"]  # no temporary file left either
    state, path = load_latest(folder)
    assert path.name == "checkpoint-0001-000000.pt" and torch.equal(state["w"], torch.full((3,), value))


def test_a_full_disk_leaves_the_previous_checkpoint_intact(tiny_fs):
    save_checkpoint({"epoch": 1, "w": torch.full((3,), 7.0)}, tiny_fs, 1, 0)
    with pytest.raises(OSError) as raised:
        save_checkpoint({"epoch": 2, "w": torch.zeros(200_000)}, tiny_fs, 2, 0)  # 800 KB into 256 KiB
    assert raised.value.errno == errno.ENOSPC
    _intact(tiny_fs, 7.0)


def test_a_read_only_folder_leaves_the_previous_checkpoint_intact(read_only):
    with pytest.raises(OSError) as raised:
        save_checkpoint({"epoch": 2, "w": torch.zeros(3)}, read_only, 2, 0)
    assert raised.value.errno == errno.EROFS
    _intact(read_only, 1.0)
    assert list_checkpoints(read_only)[0].name == "checkpoint-0001-000000.pt"


def test_the_trainer_logs_a_failed_write_and_goes_on(tiny_fs, caplog):
    caplog.set_level(logging.WARNING)
    assert write_or_warn("checkpoint", save_checkpoint, {"w": torch.zeros(200_000)}, tiny_fs, 3, 0) is None
    assert write_or_warn("best", save_weights, {"w": torch.zeros(200_000)}, tiny_fs / "best-model.safetensors") is None
    assert "event=checkpoint_failed what=checkpoint reason=ENOSPC" in caplog.text
    assert "event=checkpoint_failed what=best reason=ENOSPC" in caplog.text
    assert list(tiny_fs.iterdir()) == []


def test_the_amp_measurement_is_remembered_across_restarts(tmp_path):
    """A restarted job trains in the precision it started with, whatever the timings say now."""
    from image_classifier.training.precision import remembered

    calls = []

    def probe(answer):
        return lambda: calls.append(answer) or answer

    path = tmp_path / "checkpoints" / "amp-measurement.json"
    assert remembered(probe((1.0, 0.5)), path, "resnet18@32")() == (1.0, 0.5)
    assert remembered(probe((0.5, 1.0)), path, "resnet18@32")() == (1.0, 0.5)  # read back, not measured
    assert remembered(probe((0.5, 1.0)), path, "resnet50@224")() == (0.5, 1.0)  # another model measures
    assert calls == [(1.0, 0.5), (0.5, 1.0)]
