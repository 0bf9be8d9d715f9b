"""The training fast paths as real ``train`` jobs: cached features, the decoded-image cache.

A frozen ImageNet-pretrained EfficientNet-Lite0 (the offline weights) on the digits, so accuracy
means something: with the feature cache the job must reach the accuracy of the job without it,
write the same artifact (full model), and resume from a checkpoint to the very same result.
"""

from __future__ import annotations

import shutil

import pytest
from safetensors.torch import load_file

from tests.helpers import read_json, run_train

FROZEN = {
    "model": "tf_efficientnet_lite0",
    "image_size": "32",
    "epochs": "3",
    "batch_size": "64",
    "lr": "0.01",
    "freeze": "head",
    "augment": "none",
    "amp": "off",  # both jobs compute in fp32, so the comparison is exact up to summation order
    "num_workers": "1",
    "seed": "3",
}


def _job(base, data, weights, env=None, **extra):
    result = run_train(base, data, {**FROZEN, **extra}, channels={"pretrained": weights.parent}, env=env)
    assert result.returncode == 0, result.stdout[-4000:]
    return result.stdout, read_json(base / "output" / "data" / "metrics.json")


@pytest.fixture(scope="module")
def both_jobs(tmp_path_factory, digits_data, lite0_weights):
    base = tmp_path_factory.mktemp("fast-paths")
    cached = _job(base / "cached", digits_data, lite0_weights)
    full = _job(base / "full", digits_data, lite0_weights, feature_cache="off")
    return base, cached, full


def test_cached_features_reach_the_accuracy_of_the_full_model_job(both_jobs):
    _, (cached_log, cached), (full_log, full) = both_jobs
    assert "event=feature_cache enabled=true reason=frozen_backbone_deterministic_inputs" in cached_log
    assert "event=feature_cache_built split=train" in cached_log and "event=feature_cache_built split=validation" in cached_log
    assert "event=feature_cache enabled=false reason=feature_cache_off" in full_log and "feature_cache_built" not in full_log
    assert full["final"]["test_acc"] >= 0.6  # a pretrained frozen backbone learns the digits
    assert abs(cached["final"]["test_acc"] - full["final"]["test_acc"]) <= 0.02
    for a, b in zip(cached["history"], full["history"], strict=True):
        assert abs(a["valid_acc"] - b["valid_acc"]) <= 0.02 and abs(a["train_loss"] - b["train_loss"]) <= 0.01
    assert cached["final"]["epochs_completed"] == full["final"]["epochs_completed"] == 3
    assert _metric_lines(cached_log) == _metric_lines(full_log)  # the same lines with the same keys, in the same order


def _metric_lines(log: str) -> list[list[str]]:
    lines = [line.split(" event=", 1)[1] for line in log.splitlines() if " event=epoch " in line or " event=final " in line]
    return [[field.split("=")[0] for field in line.split()] for line in lines]


def test_cached_features_write_the_full_model(both_jobs, lite0_weights):
    base, _, _ = both_jobs
    pretrained = load_file(str(lite0_weights))
    cached = load_file(str(base / "cached" / "model" / "model.safetensors"))
    full = load_file(str(base / "full" / "model" / "model.safetensors"))
    assert cached.keys() == full.keys()
    backbone = [k for k in cached if not k.startswith("classifier.")]
    assert backbone and all(cached[k].equal(pretrained[k]) for k in backbone)  # frozen means bit-identical
    assert (cached["classifier.weight"] - full["classifier.weight"]).abs().max() < 1e-3
    card = read_json(base / "cached" / "model" / "model_card.json")
    assert card["architecture"] == "tf_efficientnet_lite0" and card["hyperparameters"]["feature_cache"] == "auto"
    kept = sorted(p.name for p in (base / "cached" / "checkpoints").glob("checkpoint-*.pt"))
    assert kept[-1] == "checkpoint-0003-000000.pt" and len(kept) <= 2  # epochs outrunning the disk may skip a write
    assert (base / "cached" / "checkpoints" / "best-model.safetensors").exists()


def test_a_resumed_job_recomputes_the_features_and_ends_the_same(both_jobs, digits_data, lite0_weights, tmp_path):
    base, (_, cached), _ = both_jobs
    # the oldest checkpoint kept: epoch 1 or 2 as a rule, 3 if the fast epochs superseded every earlier write
    older = sorted((base / "cached" / "checkpoints").glob("checkpoint-*.pt"))[0]
    epoch = int(older.name.split("-")[1])
    (tmp_path / "checkpoints").mkdir(parents=True)
    shutil.copy(older, tmp_path / "checkpoints")
    log, resumed = _job(tmp_path, digits_data, lite0_weights)
    assert f"event=resumed checkpoint={older.name} epoch={epoch}" in log
    assert "event=feature_cache_built split=train" in log
    assert [h["epoch"] for h in resumed["history"]] == [1, 2, 3]
    for again, first in zip(resumed["history"][epoch:], cached["history"][epoch:], strict=True):
        assert again["valid_acc"] == pytest.approx(first["valid_acc"], abs=1e-9)
        assert again["train_loss"] == pytest.approx(first["train_loss"], rel=1e-5)


def test_refused_with_the_reason_where_it_would_change_training(digits_job):
    _, result = digits_job  # the shared digits job: full fine-tune, light augmentation
    assert "event=feature_cache enabled=false reason=backbone_trains freeze=none augment=light" in result.stdout


@pytest.mark.slow
def test_decoded_image_cache_gives_the_same_job(tmp_path, digits_data, lite0_weights):
    """augment=light with the image cache in memory and on disk: the same training as decoding each epoch."""
    hps = {"epochs": "2", "augment": "light", "cache_images": "memory"}
    log, memory = _job(tmp_path / "memory", digits_data, lite0_weights, **hps)
    assert "event=image_cache mode=memory reason=requested" in log and "event=image_cache_built split=train mode=memory" in log
    assert "event=feature_cache enabled=false reason=random_augmentation" in log
    cache_dir = tmp_path / "cache"
    cache_dir.mkdir()
    env = {"IMAGE_CLASSIFIER_CACHE_DIR": str(cache_dir)}
    log, disk = _job(tmp_path / "disk", digits_data, lite0_weights, env=env, **{**hps, "cache_images": "disk"})
    assert "event=image_cache_built split=validation mode=disk" in log
    assert list(cache_dir.iterdir()) == []  # the file is unlinked once mapped: nothing outlives the job
    log, fresh = _job(tmp_path / "none", digits_data, lite0_weights, **{**hps, "cache_images": "none"})
    assert "event=image_cache mode=none reason=cache_images_none" in log
    for job in (memory, disk):
        assert [h["train_loss"] for h in job["history"]] == pytest.approx([h["train_loss"] for h in fresh["history"]], rel=1e-5)
        assert job["final"]["test_acc"] == pytest.approx(fresh["final"]["test_acc"], abs=1e-9)
