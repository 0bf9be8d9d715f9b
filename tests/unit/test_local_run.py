"""The built-in sample is seeded only where compose asks and no data is present; ownership goes back."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from image_classifier.local_run import hand_back, has_data, seed_sample


@pytest.fixture
def sample(tmp_path) -> Path:
    root = tmp_path / "sample"
    for split in ("train", "validation"):
        for label in ("a", "b"):
            (root / "data" / split / label).mkdir(parents=True)
            (root / "data" / split / label / "1.png").write_bytes(b"png")
    (root / "pretrained").mkdir()
    (root / "pretrained" / "w.safetensors").write_bytes(b"w")
    (root / "hyperparameters.json").write_text('{"epochs": "3"}')
    return root


def _asked(sample: Path, **extra: str) -> dict[str, str]:
    return {"IMAGE_CLASSIFIER_SAMPLE_DIR": str(sample), **extra}


def test_an_empty_opt_ml_gets_the_sample_as_its_channels(tmp_path, sample):
    base = tmp_path / "opt_ml"
    base.mkdir()  # what Docker creates for a missing bind-mount source
    assert seed_sample(base, _asked(sample))
    assert (base / "input/data/train/a/1.png").exists() and (base / "input/data/pretrained/w.safetensors").exists()
    assert json.loads((base / "input/config/hyperparameters.json").read_text()) == {"epochs": "3"}
    assert set(json.loads((base / "input/config/inputdataconfig.json").read_text())) == {"train", "validation", "pretrained"}


def test_only_when_compose_asks(tmp_path, sample):
    base = tmp_path / "opt_ml"
    assert not seed_sample(base, {}) and not has_data(base)


def test_never_in_a_sagemaker_job(tmp_path, sample):
    base = tmp_path / "opt_ml"
    assert not seed_sample(base, _asked(sample, TRAINING_JOB_ARN="arn:aws:sagemaker:us-east-1:123456789012:training-job/x"))
    assert not has_data(base)


def test_the_users_data_and_hyperparameters_win(tmp_path, sample):
    base = tmp_path / "opt_ml"
    (base / "input/data/train/cat").mkdir(parents=True)
    (base / "input/data/train/cat/mine.jpg").write_bytes(b"jpg")
    assert not seed_sample(base, _asked(sample))
    assert sorted(p.name for p in (base / "input/data").iterdir()) == ["train"]
    empty = tmp_path / "with-config"
    (empty / "input/config").mkdir(parents=True)
    (empty / "input/config/hyperparameters.json").write_text('{"epochs": "9"}')
    (empty / "input/data/train").mkdir(parents=True)  # an empty channel folder is no data
    assert seed_sample(empty, _asked(sample))
    assert json.loads((empty / "input/config/hyperparameters.json").read_text()) == {"epochs": "9"}


@pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root (CI and the containers run as root)")
def test_what_root_wrote_goes_back_to_the_folders_owner(tmp_path):
    base = tmp_path / "opt_ml"
    (base / "model").mkdir(parents=True)
    (base / "model" / "model.safetensors").write_bytes(b"w")
    assert hand_back(base) == 0  # a root-owned folder (SageMaker's /opt/ml): nothing changes
    os.chown(base, 4321, 4321)
    assert hand_back(base) == 2
    assert {(p.stat().st_uid, p.stat().st_gid) for p in base.rglob("*")} == {(4321, 4321)}
