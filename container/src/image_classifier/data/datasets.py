"""A map-style dataset over an index, a resumable sampler, and a collate that counts bad files.

Random augmentation is a function of (seed, epoch, sample), not of a worker's RNG stream: the
sampler hands each index with its own seed. So a job resumed from a checkpoint (after SIGTERM,
or SIGKILL from the last epoch checkpoint) sees exactly the augmented images an uninterrupted job
sees, whatever the number of loader workers and wherever they were restarted.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import torch
from torch.utils.data import Dataset, Sampler

from image_classifier.data.loading import UnreadableImage, load_rgb
from image_classifier.data.samples import as_samples

log = logging.getLogger(__name__)


class LabelledImages(Dataset):
    """Decodes on access; an unreadable file yields ``None`` (dropped and counted by ``collate``)."""

    def __init__(self, samples: Sequence[tuple[Path, int]], transform: Callable, draft_size: int | None = None):
        self.samples = as_samples(samples)  # compact: loader workers read it without copying it
        self.transform = transform
        self.draft = (draft_size, draft_size) if draft_size else None

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key: int | tuple[int, int]):
        index, seed = key if isinstance(key, tuple) else (key, None)
        path, label = self.samples[index]
        try:
            image = load_rgb(path, self.draft)
        except UnreadableImage as exc:
            log.warning("event=skip_unreadable reason=%s", str(exc).replace(" ", "_")[:200])
            return None
        if seed is None:
            return self.transform(image), label
        with seeded(seed):
            return self.transform(image), label


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    """The CPU generator seeded for one sample's augmentation; the caller's stream is restored after.

    Only the CPU generator (the transforms draw from nothing else): ``torch.manual_seed`` also queues
    a CUDA seeding, and where CUDA is not initialised (every loader worker; a CPU host with the CUDA
    build) it records a stack trace for that each time, ~1 ms a sample in a loader: 12 % of a
    training step on a 32 px image (measured by profiling ``local/bench/quality_bench.py``).
    """
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        yield


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """The augmentation seed of one sample in one epoch (any fixed mixing of the three will do)."""
    return (seed * 1_000_003 + epoch) * 10_000_019 + index & (2**63 - 1)


def collate(batch: list) -> tuple[torch.Tensor, torch.Tensor, int]:
    good = [item for item in batch if item is not None]
    bad = len(batch) - len(good)
    if not good:
        return torch.empty(0), torch.empty(0, dtype=torch.long), bad
    images = torch.stack([item[0] for item in good])
    labels = torch.tensor([item[1] for item in good], dtype=torch.long)
    return images, labels, bad


class ResumableSampler(Sampler[int]):
    """Seeded shuffling, sharded across ranks, that can start part-way through an epoch.

    Same order for the same (seed, epoch) on every rank and every restart, so a job resumed
    after a Spot interruption sees exactly the samples it had not yet seen.
    """

    def __init__(
        self, size: int, *, seed: int, shuffle: bool, rank: int = 0, world_size: int = 1, pad: bool = True, with_seeds: bool = False
    ):
        """``with_seeds``: yield ``(index, sample_seed)`` pairs for ``LabelledImages`` (training)."""
        self.size, self.seed, self.shuffle, self.with_seeds = size, seed, shuffle, with_seeds
        self.rank, self.world_size, self.pad = rank, world_size, pad
        self.epoch = 0
        self.skip = 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        """``skip``: samples of this rank's shard already consumed (resume mid-epoch)."""
        self.epoch, self.skip = epoch, skip

    def _shard(self) -> list[int]:
        if self.shuffle:
            gen = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.size, generator=gen).tolist()
        else:
            order = list(range(self.size))
        if self.pad and self.world_size > 1:
            total = -(-self.size // self.world_size) * self.world_size
            order += order[: total - self.size]
        return order[self.rank :: self.world_size]

    def __iter__(self) -> Iterator:
        indices = self._shard()[self.skip :]
        if self.with_seeds:
            return iter([(i, sample_seed(self.seed, self.epoch, i)) for i in indices])
        return iter(indices)

    def __len__(self) -> int:
        return max(0, len(self._shard()) - self.skip)
