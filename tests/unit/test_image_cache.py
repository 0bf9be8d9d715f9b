"""The decoded-image cache: the same training inputs as decoding every epoch, and where it goes."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from image_classifier.data import image_cache
from image_classifier.data.datasets import LabelledImages
from image_classifier.data.presets import DataConfig, eval_transform, train_transform
from image_classifier.errors import UserError
from image_classifier.training.inputs import default_workers

CONFIG = DataConfig(input_size=64, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), interpolation="bicubic", crop_pct=0.875)


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    from skimage import data

    folder = tmp_path_factory.mktemp("photos")
    samples = []
    for i, load in enumerate((data.chelsea, data.rocket, data.coffee, data.astronaut)):
        path = folder / f"{i}.{'png' if i == 1 else 'jpg'}"
        Image.fromarray(load()).save(path)
        samples.append((path, i % 2))
    bad = folder / "bad.jpg"
    bad.write_bytes(b"truncated")
    return [*samples, (bad, 0)]


@pytest.mark.parametrize("mode", ["memory", "disk"])
@pytest.mark.parametrize("augment", ["none", "light", "eval"])
def test_cached_images_are_bit_identical_to_decoding_each_time(photos, mode, augment, tmp_path):
    transform = eval_transform(CONFIG) if augment == "eval" else train_transform(CONFIG, augment)
    side = image_cache.cached_side(CONFIG, "none" if augment == "eval" else augment)
    images = image_cache.build([p for p, _ in photos], CONFIG, side, mode, threads=2, directory=tmp_path)
    cached = image_cache.CachedImages(images, [label for _, label in photos], transform)
    fresh = LabelledImages(photos, transform, draft_size=CONFIG.resize_size)
    for index in range(len(photos) - 1):
        keys = [(index, 1234 + index)] if augment == "light" else [index, (index, 1234 + index)]  # random: same seed, same draw
        for key in keys:
            a, b = cached[key], fresh[key]
            assert a[1] == b[1] and torch.equal(a[0], b[0]), (mode, augment, key)
    assert cached[len(photos) - 1] is None and fresh[len(photos) - 1] is None
    if mode == "disk":
        assert list(tmp_path.iterdir()) == []  # unlinked once mapped


def test_standard_augmentation_crops_from_a_larger_cached_image(photos):
    side = image_cache.cached_side(CONFIG, "standard")
    assert side >= CONFIG.input_size / 0.5**0.5 and side >= CONFIG.resize_size
    images = image_cache.build([photos[0][0]], CONFIG, side, "memory", threads=1)
    assert min(images.get(0).shape[1:]) == side
    out, _ = image_cache.CachedImages(images, [0], train_transform(CONFIG, "standard"))[(0, 5)]
    assert out.shape == (3, 64, 64)


def test_auto_goes_to_memory_then_disk_then_nowhere(monkeypatch, tmp_path):
    monkeypatch.setenv("IMAGE_CLASSIFIER_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(image_cache.psutil, "virtual_memory", lambda: type("M", (), {"available": 1000})())
    monkeypatch.setattr(image_cache.shutil, "disk_usage", lambda _: type("D", (), {"free": 10_000})())
    plan = image_cache.plan
    assert plan("auto", 200, feature_cache=False, epochs_left=5) == image_cache.Plan("memory", "fits_in_memory")
    assert plan("auto", 2000, feature_cache=False, epochs_left=5) == image_cache.Plan("disk", "fits_on_disk")
    assert plan("auto", 9000, feature_cache=False, epochs_left=5).reason == "too_large"
    assert plan("auto", 200, feature_cache=True, epochs_left=5).reason == "feature_cache_runs"
    assert plan("auto", 200, feature_cache=False, epochs_left=1).reason == "one_epoch"
    assert plan("none", 1, feature_cache=False, epochs_left=5).mode == "none"
    assert plan("disk", 2000, feature_cache=True, epochs_left=1).mode == "disk"
    with pytest.raises(UserError, match="cache_images=memory needs"):
        plan("memory", 900, feature_cache=False, epochs_left=5)
    with pytest.raises(UserError, match="cache_images=disk needs"):
        plan("disk", 9500, feature_cache=False, epochs_left=5)


def test_estimate_reads_headers_only(photos):
    paths = [p for p, _ in photos]
    estimate = image_cache.estimate_bytes(paths, 100)
    assert 5 * 3 * 100 * 100 <= estimate <= 5 * 3 * 100 * 200


def test_loader_workers_sized_to_the_machine():
    assert default_workers(2, 1, cuda=False) == 1
    assert default_workers(16, 1, cuda=True) == 15 and default_workers(16, 4, cuda=True) == 3  # one CPU of each share for its trainer
    assert default_workers(96, 8, cuda=True) == 11 and default_workers(192, 1, cuda=True) == 32  # no cap of 8 on a p4d
    assert default_workers(1, 1, cuda=False) == 1
