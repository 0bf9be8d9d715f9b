"""Each in-process check fires on a run that provokes it (the healthy run: test_train_artifacts)."""

from __future__ import annotations

import shutil

import pytest

from tests.helpers import DIGITS_HPS, read_json, run_train


def _findings(base):
    return {f["rule"] for f in read_json(base / "output" / "data" / "training_report.json")["findings"]}


def test_zero_learning_rate_fires_loss_not_decreasing(tmp_path, digits_data):
    result = run_train(tmp_path, digits_data, {**DIGITS_HPS, "lr": "0", "epochs": "2", "label_smoothing": "0"})
    assert result.returncode == 0, result.stdout[-3000:]
    assert "loss_not_decreasing" in _findings(tmp_path)
    assert "event=check_fired rule=loss_not_decreasing" in result.stdout


def test_huge_learning_rate_fires_exploding_gradients(tmp_path, digits_data):
    result = run_train(tmp_path, digits_data, {**DIGITS_HPS, "lr": "50", "optimizer": "sgd", "epochs": "1"})
    assert result.returncode == 0, result.stdout[-3000:]
    assert "exploding_gradients" in _findings(tmp_path)


@pytest.mark.slow
def test_tiny_training_set_fires_overfitting(tmp_path, digits_data):
    data = tmp_path / "d"
    shutil.copytree(digits_data, data)
    for folder in (data / "train").iterdir():
        for extra in sorted(folder.iterdir())[5:]:
            extra.unlink()
    hps = {
        **DIGITS_HPS,
        "epochs": "30",
        "augment": "none",
        "batch_size": "10",
        "lr": "0.003",
        "max_bad_fraction": "0.5",
        "label_smoothing": "0",
    }
    result = run_train(tmp_path / "job", data, hps)
    assert result.returncode == 0, result.stdout[-3000:]
    assert "overfitting" in _findings(tmp_path / "job")
