"""Shards (data/shards.py) and their stream (data/shard_stream.py): written, read, ordered and resumed exactly."""

from __future__ import annotations

import io
import json
import tarfile

import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from image_classifier.data import shards
from image_classifier.data.datasets import collate
from image_classifier.data.presets import DataConfig, train_transform
from image_classifier.data.samples import Samples
from image_classifier.data.shard_stream import ShardedSplit, ShardStream, StreamedImages, decodes, epoch_plan
from image_classifier.errors import UserError
from local.sample_data import write_digits


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    root = write_digits(tmp_path_factory.mktemp("digits"), size=16)
    classes = sorted(p.name for p in (root / "train").iterdir())
    return [(p, i) for i, c in enumerate(classes) for p in sorted((root / "train" / c).glob("*.png"))], classes


@pytest.fixture(scope="module")
def split(digits, tmp_path_factory):
    samples, classes = digits
    folder = tmp_path_factory.mktemp("shards")
    shards.write_shards(samples, classes, folder, split="train", seed=3, shard_bytes=30_000, chunk_samples=40)
    return ShardedSplit.from_folder(folder)


def test_every_image_is_written_once_in_a_seeded_order_that_tar_reads(digits, split):
    samples, classes = digits
    manifest = split.manifest
    assert manifest.samples == len(split) == len(samples) and manifest.classes == classes and len(manifest.shards) > 3
    written = list(shards.iter_all(split.folder, manifest))
    expected = sorted((p.read_bytes(), label) for p, label in samples)
    assert sorted(written) == expected and written != [(p.read_bytes(), label) for p, label in samples]  # all there, shuffled
    with tarfile.open(split.folder / manifest.shards[0].name) as tar:  # the WebDataset layout: <key>.png + <key>.cls
        names = tar.getnames()
    assert names[0].endswith(".png") and names[1] == names[0].replace(".png", ".cls")


def test_the_bytes_are_deterministic_so_an_unchanged_shard_is_not_sent_again(digits, split, tmp_path):
    samples, classes = digits
    again = shards.write_shards(samples, classes, tmp_path, split="train", seed=3, shard_bytes=30_000, chunk_samples=40)
    assert [s.sha256 for s in again.shards] == [s.sha256 for s in split.manifest.shards]
    other = shards.write_shards(samples, classes, tmp_path / "other", split="train", seed=4, shard_bytes=30_000, chunk_samples=40)
    assert [s.sha256 for s in other.shards] != [s.sha256 for s in split.manifest.shards]


@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_training_ranks_take_equal_steps_and_validation_sees_every_image_once(split, world):
    n = len(split)
    train = [[key[0] for key in ShardStream(split, seed=1, shuffle=True, rank=r, world_size=world, pad=True)] for r in range(world)]
    assert len({len(ids) for ids in train}) == 1 and set().union(*map(set, train)) == set(range(n))
    held_out = [[key[0] for key in ShardStream(split, seed=1, shuffle=False, rank=r, world_size=world, pad=False)] for r in range(world)]
    every = [i for ids in held_out for i in ids]
    assert sorted(every) == list(range(n))


def test_each_rank_reads_its_share_in_few_contiguous_reads(split):
    """Validation on 3 ranks: each rank's slice is contiguous, so it reads about a third of the chunks, not all."""
    plans = [epoch_plan(split, seed=1, epoch=0, shuffle=False, rank=r, world_size=3, pad=False) for r in range(3)]
    chunks = len(split.chunk_len)
    assert all(len(plan) <= chunks // 3 + 2 for plan in plans)


def test_a_resumed_epoch_continues_exactly_where_it_stopped_whatever_the_loader_workers(split):
    stream = ShardStream(split, seed=5, shuffle=True, with_seeds=True)
    stream.set_epoch(2)
    whole = list(stream)
    stream.set_epoch(2, skip=123)
    assert list(stream) == whole[123:]
    stream.set_epoch(3)
    assert [k[0] for k in stream] != [k[0] for k in whole]  # another epoch, another order
    config = DataConfig(16, (0.5,) * 3, (0.5,) * 3, "bilinear", 1.0)
    transform = train_transform(config, "standard")
    batches = {}
    for workers in (0, 2):
        stream.set_epoch(2, skip=64)
        loader = DataLoader(StreamedImages(transform), batch_size=32, sampler=stream, num_workers=workers, collate_fn=collate)
        batches[workers] = [(images, labels) for images, labels, _ in loader]
    assert len(batches[0]) == len(batches[2]) == -(-(len(split) - 64) // 32)
    for (a, la), (b, lb) in zip(batches[0], batches[2], strict=True):
        assert torch.equal(la, lb) and torch.equal(a, b)  # the same augmented images, in the same order


def test_an_image_that_does_not_decode_is_dropped_and_counted(tmp_path):
    good = tmp_path / "good.png"
    Image.new("RGB", (8, 8), (10, 200, 30)).save(good)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n but not an image")
    shards.write_shards([(good, 0), (bad, 1), (good, 1)], ["a", "b"], tmp_path / "s", split="train")
    split = ShardedSplit.from_folder(tmp_path / "s")
    config = DataConfig(8, (0.5,) * 3, (0.5,) * 3, "bilinear", 1.0)
    loader = DataLoader(
        StreamedImages(train_transform(config, "none")), batch_size=3, sampler=ShardStream(split, seed=0, shuffle=False), collate_fn=collate
    )
    (_images, labels, n_bad), *_ = list(loader)
    assert n_bad == 1 and len(labels) == 2
    assert decodes(split, samples=10, seed=0, rank=0) == (3, 1)


def test_a_damaged_manifest_or_shard_is_refused_with_the_reason(split, tmp_path):
    (tmp_path / shards.MANIFEST).write_text(json.dumps({"format": "something-else", "version": 1}))
    with pytest.raises(UserError, match="not a shard manifest"):
        shards.read_manifest(tmp_path)
    (tmp_path / shards.MANIFEST).write_text(split.manifest.to_json())
    with pytest.raises(UserError, match=r"shard-000000\.tar is missing"):
        shards.check_files(tmp_path, split.manifest)
    (tmp_path / split.manifest.shards[0].name).write_bytes(b"short")
    with pytest.raises(UserError, match="has 5 bytes, the manifest says"):
        shards.check_files(tmp_path, split.manifest)


def test_a_million_images_cost_little_to_hold(tmp_path):
    """A folder split's index holds ~100 bytes an image in three arrays, not a tuple per image."""
    samples = Samples((f"/opt/ml/input/data/train/class_{i % 100:03d}/photo_{i:07d}.jpg", i % 100) for i in range(100_000))
    assert samples.nbytes() / len(samples) < 100  # a tuple of (Path, int) costs ~390
    assert samples[12345] == (samples.path(12345), 45) and str(samples.path(12345)).endswith("photo_0012345.jpg")
    assert list(samples)[:2] == [samples[0], samples[1]] and samples == Samples(list(samples))


def test_the_manifest_of_a_large_split_is_small(split):
    """Chunk offsets, not one entry per image: its size grows with chunks (one per ``chunk_samples`` images)."""
    per_image = len(split.manifest.to_json()) / len(split)
    assert per_image < 20 and io.BytesIO(split.manifest.to_json().encode()).getbuffer().nbytes < 5_000
