"""What the epochs read: the loaders over the splits ``preflight.prepare_data`` checked, and the two caches in front of them.

``image_loaders`` builds the train and validation loaders: over a folder split's files (through the
decoded-image cache where ``cache_images`` allows), or over a sharded split's stream
(``data/shard_stream.py``, never cached: its point is a data set too large to hold).
``feature_loaders`` replaces both with batches of backbone features when the feature cache runs
(``training/feature_cache.py``; folder splits only).

Loader workers ignore SIGINT and SIGTERM: a signal sent to the whole process group (Ctrl-C in a
terminal, ``timeout``, some ``docker stop``s) must reach the training process alone, which writes
its checkpoint and stops the workers itself, instead of killing them under it.
"""

from __future__ import annotations

import logging
import signal
import time
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler, SequentialSampler

from image_classifier.data import image_cache
from image_classifier.data.datasets import LabelledImages, ResumableSampler, collate
from image_classifier.data.presets import DataConfig, eval_transform, train_transform
from image_classifier.data.samples import Samples
from image_classifier.data.shard_stream import ShardedSplit, ShardStream, StreamedImages
from image_classifier.hyperparameters import Hyperparameters
from image_classifier.metrics import format_line
from image_classifier.modeling.factory import classifier_of
from image_classifier.training import feature_cache
from image_classifier.training.distributed import World
from image_classifier.training.engine import Precision, StopFlag
from image_classifier.training.preflight import DataSplits, Split


@dataclass(frozen=True)
class Loaders:
    """Batches for the epochs: images (optionally cached decoded), or cached backbone features."""

    train: DataLoader | feature_cache.FeatureBatches
    valid: DataLoader | feature_cache.FeatureBatches

    def start_epoch(self, epoch: int, skip_samples: int) -> None:
        """Both kinds of train batches come from a ``ResumableSampler``: this epoch's order, minus what was done."""
        self.train.sampler.set_epoch(epoch, skip_samples)  # type: ignore[union-attr,attr-defined]


log = logging.getLogger(__name__)
MAX_GPU_WORKERS = 32  # beyond this the loader's own overhead (IPC, memory per worker) grows faster than its throughput


def default_workers(num_cpus: int, processes: int, cuda: bool) -> int:
    """Loader processes per training process, sized to the machine.

    On a GPU the model waits for the input, so every CPU of the process's share but one decodes (the
    training process keeps one): 11 on each of an ml.p4d's eight ranks, where a cap of 8 left a quarter
    of its 96 vCPUs idle. On CPU the loader and the model share the same cores: one worker overlaps
    decoding with compute, and more only take cores from the model (measured in ``local/bench``).
    """
    share = max(1, num_cpus // max(1, processes))
    return max(1, min(MAX_GPU_WORKERS, share - 1)) if cuda else max(1, min(8, share // 4))


def ignore_group_signals(_worker_id: int) -> None:
    """A loader worker leaves SIGINT/SIGTERM to the training process (see the module's docstring)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def train_sampler(size: int, hp: Hyperparameters, world: World, *, with_seeds: bool) -> ResumableSampler:
    return ResumableSampler(size, seed=hp.seed, shuffle=True, rank=world.rank, world_size=world.size, pad=True, with_seeds=with_seeds)


def make_loader(
    samples: Split,
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
    dataset: Dataset
    sampler: Sampler
    if isinstance(samples, ShardedSplit):
        dataset = StreamedImages(transform, draft_size=config.resize_size)
        sampler = ShardStream(samples, seed=hp.seed, shuffle=train, rank=world.rank, world_size=world.size, pad=train, with_seeds=train)
    else:
        dataset = (
            image_cache.CachedImages(images, samples.labels.tolist(), transform)
            if images is not None
            else LabelledImages(samples, transform, draft_size=config.resize_size)
        )
        if train:
            sampler = train_sampler(len(samples), hp, world, with_seeds=True)
        else:
            sampler = ResumableSampler(len(samples), seed=hp.seed, shuffle=False, rank=world.rank, world_size=world.size, pad=False)
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
        worker_init_fn=ignore_group_signals,
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
    if data.sharded:
        log.info(format_line("image_cache", mode="none", reason="sharded_input"))
        return [None, None]
    assert isinstance(data.train, Samples) and isinstance(data.valid, Samples)
    splits = (("train", data.train, image_cache.cached_side(config, hp.augment)), ("validation", data.valid, config.resize_size))
    needed = processes * sum(image_cache.estimate_bytes(samples.paths(), side) for _, samples, side in splits)
    plan = image_cache.plan(hp.cache_images, needed, feature_cache=feature_cache_on, epochs_left=hp.epochs)
    log.info(format_line("image_cache", mode=plan.mode, reason=plan.reason, estimated_megabytes=needed / 2**20))
    if plan.mode == "none":
        return [None, None]
    built: list[image_cache.DecodedImages | None] = []
    for split, samples, side in splits:
        images, seconds = image_cache.timed_build(samples.paths(), config, side, plan.mode, threads)
        image_cache.log_built(split, images, plan.mode, seconds)
        built.append(images)
    return built


def _extraction_loader(
    samples: Samples, config: DataConfig, hp: Hyperparameters, world: World, *, workers: int, pin: bool
) -> tuple[DataLoader, list[int]]:
    """This rank's shard of a split, in order, each sample with its index (for the feature cache)."""
    dataset = feature_cache.indexed(LabelledImages(samples, eval_transform(config), draft_size=config.resize_size))
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
        assert isinstance(samples, Samples), "the feature cache is refused for sharded input (feature_cache.decide)"
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
