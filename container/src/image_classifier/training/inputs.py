"""What the epochs read: the indexed splits, their loaders, and the two caches in front of them.

``prepare_data`` indexes the channels and drops the files that do not decode (the policy of
``data/readability.py``). ``image_loaders`` then builds the train and validation loaders, over
the decoded-image cache where ``cache_images`` allows; ``feature_loaders`` replaces both with
batches of backbone features when the feature cache runs (``training/feature_cache.py``).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.data import DataLoader, SequentialSampler

from image_classifier.data import image_cache
from image_classifier.data.datasets import LabelledImages, ResumableSampler, collate
from image_classifier.data.discovery import ImageFolderIndex, check_same_classes, index_split, resolve_splits
from image_classifier.data.loading import find_unreadable
from image_classifier.data.presets import DataConfig, eval_transform, train_transform
from image_classifier.data.readability import Samples, keep_readable, log_unreadable
from image_classifier.environment import TrainingEnvironment
from image_classifier.hyperparameters import Hyperparameters
from image_classifier.metrics import format_line
from image_classifier.modeling.factory import classifier_of
from image_classifier.training import feature_cache
from image_classifier.training.distributed import World, gather_lists
from image_classifier.training.engine import Precision, StopFlag


@dataclass(frozen=True)
class DataSplits:
    """The readable samples of each split, and what was set aside on the way."""

    classes: list[str]
    train: Samples
    valid: Samples
    test: Samples | None
    bad_images: int

    @property
    def total(self) -> int:
        return len(self.train) + len(self.valid) + len(self.test or ())


@dataclass(frozen=True)
class Loaders:
    """Batches for the epochs: images (optionally cached decoded), or cached backbone features."""

    train: DataLoader | feature_cache.FeatureBatches
    valid: DataLoader | feature_cache.FeatureBatches

    def start_epoch(self, epoch: int, skip_samples: int) -> None:
        """Both kinds of train batches come from a ``ResumableSampler``: this epoch's order, minus what was done."""
        self.train.sampler.set_epoch(epoch, skip_samples)  # type: ignore[union-attr,attr-defined]


log = logging.getLogger(__name__)


def default_workers(num_cpus: int, processes: int, cuda: bool) -> int:
    """Loader processes per training process, sized to the machine.

    On a GPU the model waits for the input, so every CPU of the process's share decodes (at most 8).
    On CPU the loader and the model share the same cores: one worker overlaps decoding with compute,
    and more only take cores from the model (measured in ``local/bench``: see the README).
    """
    share = max(1, num_cpus // max(1, processes))
    return min(8, share) if cuda else max(1, min(8, share // 4))


def prepare_data(env: TrainingEnvironment, hp: Hyperparameters, world: World, workers: int) -> DataSplits:
    """Index the channels, check they agree, decode every image once and drop the unreadable ones."""
    splits = resolve_splits(env.channels)
    train = index_split("train", splits.train)
    valid = index_split("validation", splits.validation)
    test = index_split("test", splits.test) if splits.test else None
    indices = [i for i in (train, valid, test) if i is not None]
    check_same_classes(*indices)
    kept, bad_images = drop_unreadable(indices, hp, world, workers=max(2, workers))
    data = DataSplits(list(train.classes), kept[0], kept[1], kept[2] if test else None, bad_images)
    log.info(
        format_line(
            "data",
            classes=len(data.classes),
            train=len(data.train),
            valid=len(data.valid),
            test=len(data.test or ()),
            ignored_files=sum(len(i.ignored) for i in indices),
        )
    )
    return data


def drop_unreadable(indices: list[ImageFolderIndex], hp: Hyperparameters, world: World, workers: int) -> tuple[list[Samples], int]:
    """The main process decodes every image; every process applies the same verdict."""
    started = time.perf_counter()
    every = [path for index in indices for path, _ in index.samples]
    bad = find_unreadable(every, workers) if world.is_main else {}
    bad_paths = set(gather_lists(sorted(str(p) for p in bad), world))
    log_unreadable(bad)
    log.info(format_line("preflight", images=len(every), bad_images=len(bad_paths), seconds=time.perf_counter() - started))
    return keep_readable(indices, {p for p in every if str(p) in bad_paths}, hp.max_bad_fraction), len(bad_paths)


def train_sampler(size: int, hp: Hyperparameters, world: World, *, with_seeds: bool) -> ResumableSampler:
    return ResumableSampler(size, seed=hp.seed, shuffle=True, rank=world.rank, world_size=world.size, pad=True, with_seeds=with_seeds)


def make_loader(
    samples: Samples,
    transform,
    config: DataConfig,
    hp: Hyperparameters,
    world: World,
    *,
    train: bool,
    workers: int,
    pin: bool,
    images: image_cache.DecodedImages | None = None,
) -> DataLoader:
    """``images``: the split's decoded-image cache, if any (same items as decoding each file)."""
    dataset = (
        image_cache.CachedImages(images, [label for _, label in samples], transform)
        if images is not None
        else LabelledImages(list(samples), transform, draft_size=config.resize_size)
    )
    if train:
        sampler = train_sampler(len(dataset), hp, world, with_seeds=True)
    else:
        sampler = ResumableSampler(len(dataset), seed=hp.seed, shuffle=False, rank=world.rank, world_size=world.size, pad=False)
    drop_last = train and len(sampler) > hp.batch_size
    return DataLoader(
        dataset,
        batch_size=hp.batch_size,
        sampler=sampler,
        num_workers=workers,
        collate_fn=collate,
        pin_memory=pin,
        drop_last=drop_last,
        persistent_workers=workers > 0,
    )


def image_loaders(
    data: DataSplits,
    config: DataConfig,
    hp: Hyperparameters,
    world: World,
    *,
    workers: int,
    pin: bool,
    threads: int,
    feature_cache_on: bool,
) -> Loaders:
    """Train (augmented, shuffled, resumable) and validation loaders, over decoded images where cached."""
    cached = _cache_images(data, config, hp, feature_cache_on=feature_cache_on, threads=threads, processes=world.local_size)
    train = make_loader(
        data.train, train_transform(config, hp.augment), config, hp, world, train=True, workers=workers, pin=pin, images=cached[0]
    )
    valid = make_loader(data.valid, eval_transform(config), config, hp, world, train=False, workers=workers, pin=pin, images=cached[1])
    return Loaders(train, valid)


def held_out_loader(data: DataSplits, config: DataConfig, hp: Hyperparameters, world: World, *, workers: int, pin: bool) -> DataLoader:
    assert data.test is not None
    return make_loader(data.test, eval_transform(config), config, hp, world, train=False, workers=workers, pin=pin)


def _cache_images(
    data: DataSplits, config: DataConfig, hp: Hyperparameters, *, feature_cache_on: bool, threads: int, processes: int
) -> list[image_cache.DecodedImages | None]:
    """Decode and resize the train and validation images once, where ``cache_images`` says (see image_cache).

    ``processes``: training processes on this host, each building its own cache."""
    splits = (("train", data.train, image_cache.cached_side(config, hp.augment)), ("validation", data.valid, config.resize_size))
    needed = processes * sum(image_cache.estimate_bytes([p for p, _ in samples], side) for _, samples, side in splits)
    plan = image_cache.plan(hp.cache_images, needed, feature_cache=feature_cache_on, epochs_left=hp.epochs)
    log.info(format_line("image_cache", mode=plan.mode, reason=plan.reason, estimated_megabytes=needed / 2**20))
    if plan.mode == "none":
        return [None, None]
    built: list[image_cache.DecodedImages | None] = []
    for split, samples, side in splits:
        images, seconds = image_cache.timed_build([p for p, _ in samples], config, side, plan.mode, threads)
        image_cache.log_built(split, images, plan.mode, seconds)
        built.append(images)
    return built


def _extraction_loader(
    samples: Samples, config: DataConfig, hp: Hyperparameters, world: World, *, workers: int, pin: bool
) -> tuple[DataLoader, list[int]]:
    """This rank's shard of a split, in order, each sample with its index (for the feature cache)."""
    dataset = feature_cache.indexed(LabelledImages(list(samples), eval_transform(config), draft_size=config.resize_size))
    sampler = ResumableSampler(len(samples), seed=hp.seed, shuffle=False, rank=world.rank, world_size=world.size, pad=False)
    loader = DataLoader(
        dataset, batch_size=hp.batch_size, sampler=sampler, num_workers=workers, collate_fn=feature_cache.collate_indexed, pin_memory=pin
    )
    return loader, list(sampler)


def feature_loaders(
    backbone: nn.Module,
    data: DataSplits,
    config: DataConfig,
    hp: Hyperparameters,
    world: World,
    *,
    workers: int,
    pin: bool,
    device: torch.device,
    precision: Precision,
    stop: StopFlag,
) -> Loaders:
    """Run the frozen backbone once over train and validation; batches of their features, same order as the image loaders."""
    classifier = classifier_of(backbone)
    shards = []
    for split, samples in (("train", data.train), ("validation", data.valid)):
        loader, positions = _extraction_loader(samples, config, hp, world, workers=workers, pin=pin)
        labels = [label for _, label in samples]
        started = time.perf_counter()
        shard = feature_cache.extract(backbone, classifier, loader, labels, positions, device, precision, stop)
        feature_cache.log_extracted(split, shard, time.perf_counter() - started)
        shards.append(shard)
    train_features = feature_cache.gather_split(shards[0], len(data.train), world)
    sampler = train_sampler(len(data.train), hp, world, with_seeds=False)
    train = feature_cache.FeatureBatches(train_features, sampler, hp.batch_size, drop_last=len(sampler) > hp.batch_size)
    valid = feature_cache.FeatureBatches(shards[1], SequentialSampler(range(len(shards[1]))), hp.batch_size, drop_last=False)
    return Loaders(train, valid)
