"""The README's "Train on your own images" block, run as written in a fresh copy of the repository."""

from __future__ import annotations

import json
import os
import subprocess

import pytest
from PIL import Image

from image_classifier.defaults import Facts, recommend
from tests.helpers import fresh_copy, read_json
from tests.readme import script


@pytest.mark.slow
def test_train_on_your_own_images_as_written(tmp_path):
    home = tmp_path / "home"
    for name, colour in (("red_things", (200, 30, 30)), ("blue_things", (30, 30, 200))):
        (home / "photos" / name).mkdir(parents=True)
        for i in range(10):
            Image.new("RGB", (300, 200), tuple(min(255, c + 5 * i) for c in colour)).save(home / "photos" / name / f"{i}.jpg")
    (home / "photos" / "red_things" / "truncated.jpg").write_bytes(b"\xff\xd8\xff broken")
    repo = fresh_copy(tmp_path / "repo", with_venv=True)
    env = {**os.environ, "HOME": str(home), "PATH": os.environ["PATH"]}
    result = subprocess.run(["bash", "-c", script("own-images")], cwd=repo, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    opt_ml = repo / "local" / "opt_ml"
    assert '"model": "tf_efficientnet_lite0"' in result.stdout  # the `cat` of the hyperparameters written
    assert "truncated.jpg" in result.stdout + result.stderr  # reported, and not copied
    assert not list(opt_ml.rglob("truncated.jpg"))
    assert sorted(p.name for p in (opt_ml / "input" / "data" / "train").iterdir()) == ["blue_things", "red_things"]
    card = read_json(opt_ml / "model" / "model_card.json")
    assert card["classes"] == ["blue_things", "red_things"] and card["pretrained"]["source"] == "channel"
    written = json.loads((opt_ml / "input" / "config" / "hyperparameters.json").read_text())
    assert written["image_size"] == "224" and not {"epochs", "lr", "backbone_lr_mult"} & set(written)  # the trainer's rule decides
    train_images = sum(1 for _ in (opt_ml / "input" / "data" / "train").rglob("*.jpg"))
    rule = recommend(Facts(train_images, 2, "tf_efficientnet_lite0", global_batch=64, frozen=False))
    assert len(read_json(opt_ml / "output" / "data" / "metrics.json")["history"]) == rule["epochs"]
    assert f"event=defaults epochs={rule['epochs']} " in result.stdout + result.stderr
