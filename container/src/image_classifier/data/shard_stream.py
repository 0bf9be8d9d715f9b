"""Reading a sharded split (``data/shards.py``) for training: an exact, resumable order at any world size.

The order of an epoch is a function of (seed, epoch) alone: the chunks are permuted, and so are the
samples inside each chunk; the concatenation is the epoch's sequence. Training ranks take equal
contiguous slices of it (wrapping around to pad, so every rank takes the same number of steps);
validation and test ranks take disjoint slices without padding (every image exactly once). A slice
is a few runs of consecutive chunks, so each rank reads its data sequentially, one chunk per read.

``ShardStream`` is the sampler: it runs in the training process, reads the chunks of its slice
ahead of need on a few threads, and hands each sample's bytes to the loader workers as the
"index" (``StreamedImages`` decodes them there). So the order does not depend on the number of
workers, a job resumed mid-epoch skips exactly what it had consumed (``set_epoch(epoch, skip)``),
and no worker holds anything per image: the per-image state is the manifest's chunk table,
a few numpy arrays.
"""

from __future__ import annotations

import io
import logging
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torch.utils.data import Dataset, Sampler

from image_classifier.data.datasets import sample_seed, seeded
from image_classifier.data.loading import UnreadableImage, load_rgb
from image_classifier.data.shards import Manifest, chunk_size, read_chunk, read_manifest

log = logging.getLogger(__name__)
READ_AHEAD = 4  # chunks being read while the current one is handed out (FastFile serves parallel reads well)


@dataclass(frozen=True)
class ShardedSplit:
    """A sharded split as the trainer holds it: where it is, its manifest, and its chunk table."""

    folder: Path
    manifest: Manifest
    chunk_shard: np.ndarray  # per chunk: the shard it is in
    chunk_index: np.ndarray  # per chunk: its number inside that shard
    chunk_first: np.ndarray  # per chunk: the global number of its first sample (written order)
    chunk_len: np.ndarray

    @classmethod
    def from_folder(cls, folder: Path) -> ShardedSplit:
        manifest = read_manifest(folder)
        shard, index, length = [], [], []
        for s, info in enumerate(manifest.shards):
            for c in range(len(info.chunks)):
                shard.append(s)
                index.append(c)
                length.append(chunk_size(manifest, info, c))
        lengths = np.asarray(length, dtype=np.int64)
        first = np.concatenate([[0], np.cumsum(lengths)[:-1]]) if len(lengths) else np.zeros(0, np.int64)
        return cls(folder, manifest, np.asarray(shard, np.int32), np.asarray(index, np.int32), first, lengths)

    @property
    def classes(self) -> list[str]:
        return list(self.manifest.classes)

    def __len__(self) -> int:
        return int(self.chunk_len.sum())

    def read(self, chunk: int, opener: Callable = open) -> list[tuple[bytes, int]]:
        return read_chunk(self.folder, self.manifest, int(self.chunk_shard[chunk]), int(self.chunk_index[chunk]), opener)


@dataclass(frozen=True)
class Segment:
    """Samples ``positions`` (within-chunk, in reading order) of chunk ``chunk``."""

    chunk: int
    positions: np.ndarray


def epoch_plan(split: ShardedSplit, *, seed: int, epoch: int, shuffle: bool, rank: int, world_size: int, pad: bool) -> list[Segment]:
    """This rank's part of the epoch's sequence, as runs of samples of whole or partial chunks."""
    chunks = len(split.chunk_len)
    order = np.random.default_rng([seed, epoch]).permutation(chunks) if shuffle else np.arange(chunks)
    lengths = split.chunk_len[order]
    ends = np.cumsum(lengths)
    total = int(ends[-1]) if chunks else 0
    if pad:
        per_rank = -(-total // world_size)
        start, stop = rank * per_rank, (rank + 1) * per_rank
    else:
        start, stop = rank * total // world_size, (rank + 1) * total // world_size
    segments: list[Segment] = []
    position = start
    while position < stop and total:
        wrapped = position % total  # padding wraps to the start of the sequence
        k = int(np.searchsorted(ends, wrapped, side="right"))
        chunk = int(order[k])
        inside = wrapped - (int(ends[k]) - int(lengths[k]))
        take = min(int(lengths[k]) - inside, stop - position)
        within = np.random.default_rng([seed, epoch, chunk]).permutation(int(lengths[k])) if shuffle else np.arange(int(lengths[k]))
        segments.append(Segment(chunk, within[inside : inside + take]))
        position += take
    return segments


class ShardStream(Sampler):
    """Yields ``(sample_id, image_bytes, label, augmentation_seed | None)`` in this rank's order of the epoch."""

    def __init__(
        self,
        split: ShardedSplit,
        *,
        seed: int,
        shuffle: bool,
        rank: int = 0,
        world_size: int = 1,
        pad: bool = True,
        with_seeds: bool = False,
        read_ahead: int = READ_AHEAD,
        opener: Callable = open,
    ):
        self.split, self.seed, self.shuffle, self.with_seeds = split, seed, shuffle, with_seeds
        self.rank, self.world_size, self.pad = rank, world_size, pad
        self.read_ahead, self.opener = read_ahead, opener
        self.epoch = self.skip = 0
        self.chunks_read = 0  # reads since the stream was made (the benchmark's "objects opened")

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.epoch, self.skip = epoch, skip

    def _plan(self) -> list[Segment]:
        plan = epoch_plan(
            self.split, seed=self.seed, epoch=self.epoch, shuffle=self.shuffle, rank=self.rank, world_size=self.world_size, pad=self.pad
        )
        skip, kept = self.skip, []
        for segment in plan:  # drop what a resumed job already consumed
            if skip >= len(segment.positions):
                skip -= len(segment.positions)
                continue
            kept.append(Segment(segment.chunk, segment.positions[skip:]))
            skip = 0
        return kept

    def __len__(self) -> int:
        return sum(len(s.positions) for s in self._plan())

    def __iter__(self) -> Iterator[tuple[int, bytes, int, int | None]]:
        plan = self._plan()
        with ThreadPoolExecutor(max_workers=max(1, self.read_ahead), thread_name_prefix="shard-read") as pool:
            pending: deque = deque()
            upcoming = iter(plan)
            for segment in upcoming:
                pending.append((segment, pool.submit(self.split.read, segment.chunk, self.opener)))
                if len(pending) >= self.read_ahead:
                    break
            while pending:
                segment, future = pending.popleft()
                samples = future.result()
                self.chunks_read += 1
                following = next(upcoming, None)
                if following is not None:
                    pending.append((following, pool.submit(self.split.read, following.chunk, self.opener)))
                first = int(self.split.chunk_first[segment.chunk])
                for position in segment.positions:
                    data, label = samples[int(position)]
                    sample_id = first + int(position)
                    yield sample_id, data, label, sample_seed(self.seed, self.epoch, sample_id) if self.with_seeds else None


class StreamedImages(Dataset):
    """Decodes the bytes ``ShardStream`` hands over; an undecodable image yields ``None`` (counted by ``collate``)."""

    def __init__(self, transform: Callable, draft_size: int | None = None):
        self.transform = transform
        self.draft = (draft_size, draft_size) if draft_size else None

    def __getitem__(self, key: tuple[int, bytes, int, int | None]):
        sample_id, data, label, seed = key
        try:
            image = load_rgb(io.BytesIO(data), self.draft)
        except UnreadableImage as exc:
            log.warning("event=skip_unreadable sample=%d reason=%s", sample_id, str(exc).split(": ", 1)[-1].replace(" ", "_")[:200])
            return None
        if seed is None:
            return self.transform(image), label
        with seeded(seed):
            return self.transform(image), label


def decodes(split: ShardedSplit, *, samples: int, seed: int, rank: int) -> tuple[int, int]:
    """Decode up to ``samples`` images from a few random chunks (the start-up check): (checked, unreadable)."""
    if not len(split.chunk_len):
        return 0, 0
    rng = np.random.default_rng([seed, rank, 7])
    checked = bad = 0
    for chunk in rng.permutation(len(split.chunk_len))[: max(1, -(-samples // 16))]:
        for data, _ in split.read(int(chunk))[:16]:
            checked += 1
            try:
                load_rgb(io.BytesIO(data), (64, 64))
            except UnreadableImage:
                bad += 1
            if checked >= samples:
                return checked, bad
    return checked, bad
