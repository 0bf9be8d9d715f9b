"""A folder split's images and labels as three numpy arrays, not a million Python objects.

A tuple of ``(Path, int)`` costs ~390 bytes an image, and every loader worker copies what it reads
of it (reference counts are written on read: copy-on-write becomes copy-on-read), so at a million
images each process held ~0.4 GB that grew as the epoch went. Here the paths are one UTF-8 blob with
offsets, the labels an int32 array: ~100 bytes an image, shared by the forked workers untouched.
It is a read-only sequence of ``(Path, label)`` pairs, so code that iterates or indexes is unchanged.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import overload

import numpy as np


class Samples(Sequence[tuple[Path, int]]):
    def __init__(self, pairs: Iterable[tuple[Path | str, int]] = ()):
        paths: list[bytes] = []
        labels: list[int] = []
        for path, label in pairs:
            paths.append(str(path).encode())
            labels.append(label)
        self._blob = np.frombuffer(b"".join(paths), dtype=np.uint8)
        self._offsets = np.zeros(len(paths) + 1, dtype=np.int64)
        np.cumsum([len(p) for p in paths], out=self._offsets[1:])
        self.labels = np.asarray(labels, dtype=np.int32)

    def __len__(self) -> int:
        return len(self.labels)

    def path(self, index: int) -> Path:
        return Path(self._blob[self._offsets[index] : self._offsets[index + 1]].tobytes().decode())

    @overload
    def __getitem__(self, index: int) -> tuple[Path, int]: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[tuple[Path, int]]: ...
    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(index)
        return self.path(index), int(self.labels[index])

    def __iter__(self) -> Iterator[tuple[Path, int]]:
        return (self[i] for i in range(len(self)))

    def paths(self) -> list[Path]:
        return [self.path(i) for i in range(len(self))]

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Samples):
            return bool(np.array_equal(self.labels, other.labels) and np.array_equal(self._blob, other._blob))
        return isinstance(other, Sequence) and list(self) == list(other)

    __hash__ = None  # type: ignore[assignment]

    def nbytes(self) -> int:
        return self._blob.nbytes + self._offsets.nbytes + self.labels.nbytes

    def __repr__(self) -> str:
        return f"Samples({len(self)} images)"


def as_samples(pairs: Sequence[tuple[Path, int]] | Samples) -> Samples:
    return pairs if isinstance(pairs, Samples) else Samples(pairs)
