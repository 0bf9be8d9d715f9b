"""`train` as SageMaker runs it: a real process on a temp /opt/ml, string hyperparameters."""

from __future__ import annotations

import csv
import json
import socket
import subprocess

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from image_classifier.metrics import EPOCH_METRICS, metric_definitions, parse_line
from image_classifier.modeling.weights_io import sha256_of
from tests.helpers import DIGITS_HPS, VENV_BIN, read_json


def test_the_train_on_path_is_ours_and_only_one():
    """sagemaker-training (installed for script mode) declares a `train` console script too; ours replaces it."""
    from importlib.metadata import distribution

    theirs = {e.name: e.value for e in distribution("sagemaker-training").entry_points if e.group == "console_scripts"}
    assert theirs == {"train": "sagemaker_training.cli.train:main"}  # the competitor is really installed
    found = subprocess.run(["bash", "-c", f"PATH={VENV_BIN}:$PATH type -ap train"], capture_output=True, text=True).stdout.split()
    assert found and found[0] == str(VENV_BIN / "train")
    assert len({p for p in found if p.startswith(str(VENV_BIN))}) == 1
    script = (VENV_BIN / "train").read_text()
    assert "from image_classifier.training.launcher import cli" in script and "sagemaker_training.cli" not in script
    help_text = subprocess.run([str(VENV_BIN / "train"), "--help"], capture_output=True, text=True).stdout
    assert "Fine-tune a pretrained image classifier" in help_text and "--freeze" in help_text


def test_single_host_algo1_needs_no_name_resolution():
    with pytest.raises(OSError):
        socket.gethostbyname("algo-1")  # so the run below really trained without resolving it


def test_model_artifact(digits_job):
    base, _ = digits_job
    card = read_json(base / "model" / "model_card.json")
    weights = base / "model" / "model.safetensors"
    assert sorted(p.name for p in (base / "model").iterdir()) == ["model.safetensors", "model_card.json"]
    assert card["weights_sha256"] == sha256_of(weights)
    assert card["architecture"] == "resnet18" and card["num_classes"] == 10
    assert card["classes"] == sorted(card["classes"]) == [f"digit_{d}" for d in range(10)]
    assert card["preprocessing"]["input_size"] == 32 and len(card["preprocessing"]["mean"]) == 3
    assert {"torch", "torchvision", "timm", "image_classifier", "python"} <= set(card["versions"])
    assert card["metrics"]["test_acc"] > 0.5 and card["hyperparameters"]["epochs"] == 3
    state = load_file(str(weights))
    assert state["fc.weight"].shape == (10, 512) and all(t.dtype == torch.float32 for t in state.values() if t.is_floating_point())


def test_output_data(digits_job):
    base, _ = digits_job
    out = base / "output" / "data"
    metrics = read_json(out / "metrics.json")
    assert [h["epoch"] for h in metrics["history"]] == [1, 2, 3]
    assert metrics["final"]["bad_images"] == 2  # the planted truncated PNG and garbage JPEG
    for png in ("learning_curves.png", "confusion_matrix.png", "reliability_diagram.png"):
        with Image.open(out / png) as image:
            assert image.format == "PNG" and image.size[0] > 300
    rows = list(csv.DictReader((out / "per_class_metrics.csv").open()))
    assert [r["class"] for r in rows] == [f"digit_{d}" for d in range(10)]
    assert sum(int(r["support"]) for r in rows) == 200
    report = read_json(out / "training_report.json")
    assert report["status"] == "completed" and report["checks_enabled"]
    assert report["system"]["samples"] >= 1 and "cpu_percent_mean" in report["system"]
    html = (out / "training_report.html").read_text()
    assert "data:image/png;base64," in html and "Checks" in html
    assert not (base / "output" / "failure").exists()


def test_calibration_is_fitted_on_validation_and_helps_on_test(digits_job):
    """Label smoothing leaves the softmax too modest: one temperature, fitted on validation, lowers test NLL."""
    base, _ = digits_job
    calibration = read_json(base / "output" / "data" / "metrics.json")["calibration"]
    card = read_json(base / "model" / "model_card.json")
    assert card["temperature"] == calibration["temperature"] and 0.05 <= card["temperature"] <= 20
    assert card["calibration"] == calibration["splits"]
    for split in ("valid", "test"):
        values = calibration["splits"][split]
        assert values["nll_after"] < values["nll_before"], (split, values)
    assert sum(row["count"] for row in calibration["diagrams"]["test"]["after"]) == 200
    report = read_json(base / "output" / "data" / "training_report.json")
    assert report["calibration"]["temperature"] == card["temperature"]
    assert "Calibration" in (base / "output" / "data" / "training_report.html").read_text()


def test_tensorboard_scalars(digits_job):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    base, _ = digits_job
    acc = EventAccumulator(str(base / "output" / "tensorboard"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"train_loss", "valid_acc", "lr", "images_per_sec", "final/test_acc"} <= tags
    assert [e.step for e in acc.Scalars("valid_acc")] == [1, 2, 3]


def test_checkpoints_written_and_pruned(digits_job):
    base, _ = digits_job
    names = sorted(p.name for p in (base / "checkpoints").glob("checkpoint-*.pt"))
    assert names == ["checkpoint-0002-000000.pt", "checkpoint-0003-000000.pt"]
    state = torch.load(base / "checkpoints" / names[-1], weights_only=True)
    assert {"model", "optimizer", "lr_scheduler", "epoch", "step", "history"} <= set(state) and state["epoch"] == 3


def test_metric_definitions_read_the_real_log(digits_job):
    base, result = digits_job
    epoch_lines = [line for line in result.stdout.splitlines() if "event=epoch " in line]
    assert len(epoch_lines) == 3
    history = read_json(base / "output" / "data" / "metrics.json")["history"]
    best = 0.0
    for line, entry in zip(epoch_lines, history, strict=True):
        parsed = parse_line(line)
        assert set(parsed) == set(EPOCH_METRICS)
        best = max(best, entry["valid_acc"])  # the running best: the tuning objective
        for key in EPOCH_METRICS:
            assert parsed[key] == pytest.approx(best if key == "best_valid_acc" else entry[key], rel=1e-4), key
    final_line = next(line for line in result.stdout.splitlines() if "event=final " in line)
    final = read_json(base / "output" / "data" / "metrics.json")["final"]
    parsed = parse_line(final_line)
    assert parsed["test_acc"] == pytest.approx(final["test_acc"], rel=1e-4)
    assert parsed["bad_images"] == 2 and "valid_acc" not in parsed
    # every definition matches somewhere in the real log
    import re

    for definition in metric_definitions():
        assert re.search(definition["Regex"], result.stdout), definition


def test_unreadable_files_are_logged_and_counted(digits_job):
    _, result = digits_job
    assert "event=preflight" in result.stdout and "bad_images=2" in result.stdout
    assert "truncated.png" in result.stdout and "garbage.jpg" in result.stdout


def test_healthy_run_fires_no_check(digits_job):
    base, result = digits_job
    assert read_json(base / "output" / "data" / "training_report.json")["findings"] == []
    assert "event=check_fired" not in result.stdout


def test_flags_override_hyperparameters(tmp_path, digits_data):
    from tests.helpers import run_train

    result = run_train(tmp_path, digits_data, {**DIGITS_HPS, "epochs": "5"}, args=["--epochs", "1", "--checks", "false"])
    assert result.returncode == 0, result.stdout[-3000:]
    assert json.loads((tmp_path / "output" / "data" / "metrics.json").read_text())["final"]["epochs_completed"] == 1


def test_single_training_channel_with_train_valid_test(tmp_path, digits_data):
    """The dog-breed zip's layout: one `training` channel holding train/ valid/ test/."""
    from tests.helpers import run_train

    root = tmp_path / "dogImages"
    root.mkdir()
    for src, dst in (("train", "train"), ("validation", "valid"), ("test", "test")):
        (root / dst).symlink_to(digits_data / src, target_is_directory=True)
    result = run_train(tmp_path / "job", None, {**DIGITS_HPS, "epochs": "1"}, channels={"training": root})
    assert result.returncode == 0, result.stdout[-3000:]
    assert "event=data classes=10 " in result.stdout
    assert "test_acc" in read_json(tmp_path / "job" / "output" / "data" / "metrics.json")["final"]
