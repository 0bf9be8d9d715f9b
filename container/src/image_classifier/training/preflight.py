"""The data's start-up: channels indexed or their manifests read, the input checked, in time that does not grow with one process.

A folder split is walked and every image decoded once at draft scale, the work split across every
rank (``paths[rank::world]``, each rank's loader-worker count of threads) and the verdicts shared,
so the pre-flight of a million photos takes a million decodes divided by every CPU of the job, not
by one process while the others wait. A sharded split (``data/shards.py``) was checked image by image
when the data step wrote it: here its manifest is read, every shard checked for presence and size,
and a bounded random sample decoded per rank (``SHARD_SAMPLE_PER_RANK``); its images are then each
decoded once in the first epoch, where the loop counts and bounds the unreadable ones as it goes.

Refused with the reason before anything trains: Pipe mode (the trainer reads files) and
``ShardedByS3Key`` (hosts would hold different numbers of images, and the ranks of a DDP job must
take the same number of steps or it hangs).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from image_classifier.data.discovery import ImageFolderIndex, index_split, resolve_splits
from image_classifier.data.loading import find_unreadable
from image_classifier.data.readability import keep_readable, log_unreadable
from image_classifier.data.samples import Samples
from image_classifier.data.shard_stream import ShardedSplit, decodes
from image_classifier.data.shards import check_files, is_sharded
from image_classifier.environment import TrainingEnvironment
from image_classifier.errors import UserError
from image_classifier.hyperparameters import Hyperparameters
from image_classifier.metrics import format_line
from image_classifier.training.distributed import World, all_reduce_sum, gather_lists

log = logging.getLogger(__name__)
SHARD_SAMPLE_PER_RANK = 64  # images of a sharded split decoded at start by each rank

Split = Samples | ShardedSplit


@dataclass(frozen=True)
class DataSplits:
    """The readable samples of each split (a folder's, or a sharded split's stream), and what was set aside."""

    classes: list[str]
    train: Split
    valid: Split
    test: Split | None
    bad_images: int

    @property
    def total(self) -> int:
        return len(self.train) + len(self.valid) + len(self.test or ())

    @property
    def sharded(self) -> bool:
        return any(isinstance(s, ShardedSplit) for s in (self.train, self.valid, self.test))


def refuse_unsupported_input(env: TrainingEnvironment) -> None:
    for channel, described in env.input_data_config.items():
        if not isinstance(described, dict):
            continue
        if described.get("TrainingInputMode") == "Pipe":
            raise UserError(f"channel '{channel}' is in Pipe mode: this trainer reads files; use File, or FastFile for sharded data")
        if described.get("S3DistributionType") == "ShardedByS3Key" and len(env.hosts) > 1:
            raise UserError(
                f"channel '{channel}' is ShardedByS3Key: each host would hold a different part of the data and the ranks would take "
                "different numbers of steps (DDP hangs); use FullyReplicated (with shards and FastFile, each host reads only its part)"
            )


def prepare_data(env: TrainingEnvironment, hp: Hyperparameters, world: World, device: torch.device, workers: int) -> DataSplits:
    """Index or open the channels, check they agree, and check their images (see the module's docstring)."""
    refuse_unsupported_input(env)
    splits = resolve_splits(env.channels)
    roots = {"train": splits.train, "validation": splits.validation, "test": splits.test}
    opened: dict[str, ImageFolderIndex | ShardedSplit] = {
        name: ShardedSplit.from_folder(root) if is_sharded(root) else index_split(name, root) for name, root in roots.items() if root
    }
    _check_same_classes(opened)
    folders = {name: split for name, split in opened.items() if isinstance(split, ImageFolderIndex)}
    sharded = {name: split for name, split in opened.items() if isinstance(split, ShardedSplit)}
    bad_images = 0
    for split in sharded.values():
        bad_images += check_sharded(split, hp, world, device)
    kept: dict[str, Split] = dict(sharded)
    if folders:
        readable, bad = drop_unreadable(list(folders.values()), hp, world, workers=max(2, workers))
        kept |= dict(zip(folders, readable, strict=True))
        bad_images += bad
    data = DataSplits(list(opened["train"].classes), kept["train"], kept["validation"], kept.get("test"), bad_images)
    log.info(
        format_line(
            "data",
            classes=len(data.classes),
            train=len(data.train),
            valid=len(data.valid),
            test=len(data.test or ()),
            sharded=",".join(n for n, s in kept.items() if isinstance(s, ShardedSplit)) or "none",
            ignored_files=sum(len(i.ignored) for i in folders.values()),
        )
    )
    return data


def _check_same_classes(opened: dict[str, ImageFolderIndex | ShardedSplit]) -> None:
    """Every split must carry exactly the training classes, or indices would mean different things."""
    reference = list(opened["train"].classes)
    for name, split in opened.items():
        if list(split.classes) != reference:
            missing, extra = sorted(set(reference) - set(split.classes)), sorted(set(split.classes) - set(reference))
            raise UserError(
                f"class sets differ between channels 'train' and '{name}': missing from '{name}': {missing}; only in '{name}': {extra}"
            )


def check_sharded(split: ShardedSplit, hp: Hyperparameters, world: World, device: torch.device) -> int:
    """Shards present at their sizes, a sample decoded on each rank; the images the data step left out."""
    started = time.perf_counter()
    check_files(split.folder, split.manifest)
    checked, bad = decodes(split, samples=SHARD_SAMPLE_PER_RANK, seed=hp.seed, rank=world.rank)
    checked, bad = (int(v) for v in all_reduce_sum([float(checked), float(bad)], world, device))
    if bad and bad / max(checked, 1) > hp.max_bad_fraction:
        raise UserError(
            f"sharded split '{split.manifest.split}': {bad} of {checked} sampled images do not decode "
            f"(> max_bad_fraction={hp.max_bad_fraction}); the shards at {split.folder} are damaged"
        )
    log.info(
        format_line(
            "preflight",
            split=split.manifest.split,
            images=len(split),
            shards=len(split.manifest.shards),
            sampled=checked,
            sampled_bad=bad,
            left_out_by_data_step=split.manifest.bad_images,
            seconds=time.perf_counter() - started,
        )
    )
    return split.manifest.bad_images


def drop_unreadable(indices: list[ImageFolderIndex], hp: Hyperparameters, world: World, workers: int) -> tuple[list[Samples], int]:
    """Every rank decodes its share of the images; every rank applies the whole verdict."""
    started = time.perf_counter()
    every = [path for index in indices for path in index.samples.paths()]
    mine = every[world.rank :: world.size]
    bad = find_unreadable(mine, workers)
    bad_paths = set(gather_lists(sorted(str(p) for p in bad), world))
    log_unreadable(bad)
    log.info(
        format_line(
            "preflight", images=len(every), decoded_here=len(mine), bad_images=len(bad_paths), seconds=time.perf_counter() - started
        )
    )
    return keep_readable(indices, {Path(p) for p in bad_paths}, hp.max_bad_fraction), len(bad_paths)
