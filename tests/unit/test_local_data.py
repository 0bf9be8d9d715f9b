"""`make local-data DATA=...`: your images become ./local/opt_ml's channels, split and checked as deploy does."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from local import demo


@pytest.fixture
def local_tree(tmp_path, monkeypatch, lite0_weights):
    monkeypatch.setattr(demo, "WEIGHTS", lite0_weights)
    monkeypatch.setattr(demo, "PREPARED", tmp_path / "prepared")
    base = tmp_path / "opt_ml"
    base.mkdir()
    (base / "README.md").write_text("kept")
    (base / "model").mkdir()  # an earlier run's output: cleared
    return base


def _photos(root, classes=("cat", "dog"), per_class=10):
    for name in classes:
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            Image.new("RGB", (40, 30), (i * 20, 10, 200)).save(root / name / f"{i}.jpg")
    return root


def test_a_folder_of_class_folders_is_split_checked_and_becomes_the_channels(tmp_path, local_tree):
    photos = _photos(tmp_path / "photos")
    (photos / "cat" / "broken.jpg").write_bytes(b"not a jpeg")
    demo.prepare(local_tree, data=str(photos))
    data = local_tree / "input" / "data"
    counted = {split: sum(1 for _ in (data / split).rglob("*.jpg")) for split in ("train", "validation", "test")}
    assert counted == {"train": 16, "validation": 2, "test": 2}  # 20 readable of 21: the broken file stays behind
    assert not any(p.name == "broken.jpg" for p in data.rglob("*"))
    assert sorted(p.name for p in (data / "train").iterdir()) == ["cat", "dog"]
    assert (data / "pretrained" / "tf_efficientnet_lite0.safetensors").exists()
    hps = json.loads((local_tree / "input" / "config" / "hyperparameters.json").read_text())
    assert hps["model"] == "tf_efficientnet_lite0" and hps["pretrained"] == "true" and hps["image_size"] == "224"
    assert set(json.loads((local_tree / "input" / "config" / "inputdataconfig.json").read_text())) == {
        "train",
        "validation",
        "test",
        "pretrained",
    }
    assert (local_tree / "README.md").read_text() == "kept" and not (local_tree / "model").exists()
    assert (photos / "cat" / "0.jpg").exists()  # the user's files are never moved


def test_a_folder_too_broken_to_train_on_is_refused_before_anything_is_written(tmp_path, local_tree):
    from image_classifier.errors import UserError

    photos = _photos(tmp_path / "photos", per_class=3)
    for path in (photos / "dog").iterdir():
        path.write_bytes(b"garbage")
    with pytest.raises(UserError, match="unreadable"):
        demo.prepare(local_tree, data=str(photos))
    assert not (local_tree / "input" / "data" / "train").exists()
