"""Training data as a few large tar shards with a manifest: the layout for a million photos.

A folder of a million files costs at every step that touches each file: SageMaker's File mode copies
them one by one, FastFile opens each one lazily from S3 (~10 ms each), and a trainer that lists and
checks them at start grows with their number. Shards are written once by deploy's data step, which
decodes every image anyway, and read sequentially, a chunk at a time.

Layout of a sharded split (a channel folder, or an S3 prefix behind FastFile)::

    manifest.json                 what is in the split: classes, shards, counts, chunk offsets, verdicts
    shard-000000.tar ...          WebDataset layout: per sample ``<key>.<ext>`` (the image's own bytes)
                                  and ``<key>.cls`` (the class index), so users' tools read them too

Samples are written in a seeded random order. Every ``chunk_samples`` samples the manifest records
the byte offset where that sample's first member begins, so a reader can take any chunk with one
contiguous read, and no per-sample index is needed at start (the manifest of a million images is a
few hundred KB). The bytes are deterministic (fixed member metadata), so an unchanged shard has the
same sha256 and is not uploaded again.

Torch-free: deploy writes shards with it; ``data/shard_stream.py`` reads them for training.
"""

from __future__ import annotations

import hashlib
import io
import json
import random
import tarfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from image_classifier.errors import UserError

MANIFEST = "manifest.json"
FORMAT = "image-classifier-shards"
VERSION = 1
SHARD_BYTES = 256 * 2**20  # a new shard after this many bytes: a few hundred MB, as S3 and FastFile prefer
CHUNK_SAMPLES = 256  # samples per contiguous read (~25 MB of 100 KB photos)
LABEL_EXTENSION = "cls"
BLOCK = 512  # tar's record


@dataclass(frozen=True)
class ShardInfo:
    name: str
    samples: int
    bytes: int
    sha256: str
    chunks: list[int]  # byte offset of sample 0, c, 2c, ... (c = chunk_samples); the last chunk ends at ``end``
    end: int  # where the last sample's last member ends (the end-of-archive blocks follow)


@dataclass(frozen=True)
class Manifest:
    split: str
    classes: list[str]
    chunk_samples: int
    shards: list[ShardInfo]
    bad_images: int = 0  # unreadable files the data step left out
    bad_examples: list[dict[str, str]] = field(default_factory=list)
    format: str = FORMAT
    version: int = VERSION

    @property
    def samples(self) -> int:
        return sum(s.samples for s in self.shards)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1) + "\n"

    @classmethod
    def from_json(cls, text: str, where: str = MANIFEST) -> Manifest:
        try:
            raw = json.loads(text)
            if raw.get("format") != FORMAT or raw.get("version") != VERSION:
                raise UserError(
                    f"{where}: not a shard manifest of version {VERSION} (format={raw.get('format')!r}, version={raw.get('version')!r})"
                )
            shards = [ShardInfo(**s) for s in raw.pop("shards")]
            return cls(shards=shards, **raw)
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise UserError(f"{where} is not a valid shard manifest: {exc}") from None


def is_sharded(folder: Path) -> bool:
    return (folder / MANIFEST).is_file()


def read_manifest(folder: Path) -> Manifest:
    return Manifest.from_json((folder / MANIFEST).read_text(), str(folder / MANIFEST))


def _member(name: str, data: bytes) -> tuple[tarfile.TarInfo, io.BytesIO]:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode, info.uname, info.gname = len(data), 0, 0o644, "", ""
    return info, io.BytesIO(data)


def write_shards(
    samples: Sequence[tuple[Path, int]],
    classes: Sequence[str],
    dest: Path,
    *,
    split: str,
    seed: int = 0,
    shard_bytes: int = SHARD_BYTES,
    chunk_samples: int = CHUNK_SAMPLES,
    bad: Sequence[tuple[Path, str]] = (),
) -> Manifest:
    """Write ``samples`` (readable image files and their class index) as shards in ``dest``, in a seeded order."""
    order = list(samples)
    random.Random(f"{seed}:{split}").shuffle(order)
    items = ((Path(path).read_bytes(), Path(path).suffix.lower().lstrip(".") or "img", label) for path, label in order)
    return write_items(items, classes, dest, split=split, shard_bytes=shard_bytes, chunk_samples=chunk_samples, bad=bad)


def write_items(
    items: Iterable[tuple[bytes, str, int]],
    classes: Sequence[str],
    dest: Path,
    *,
    split: str,
    shard_bytes: int = SHARD_BYTES,
    chunk_samples: int = CHUNK_SAMPLES,
    bad: Sequence[tuple[Path, str]] = (),
) -> Manifest:
    """Write (image bytes, extension, class index) items as shards in ``dest``, in the order given."""
    dest.mkdir(parents=True, exist_ok=True)
    for stale in dest.glob("shard-*.tar"):
        stale.unlink()
    shards: list[ShardInfo] = []
    pending = iter(items)
    item = next(pending, None)
    position = 0
    while item is not None:
        name = f"shard-{len(shards):06d}.tar"
        chunks, written, start = [], 0, position
        with tarfile.open(dest / name, "w", format=tarfile.USTAR_FORMAT) as tar:
            while item is not None and (written < shard_bytes or position == start):
                data, extension, label = item
                if (position - start) % chunk_samples == 0:
                    chunks.append(tar.offset)
                key = f"{position:09d}"
                tar.addfile(*_member(f"{key}.{extension}", data))
                tar.addfile(*_member(f"{key}.{LABEL_EXTENSION}", str(label).encode()))
                written += len(data)
                position += 1
                item = next(pending, None)
            end = tar.offset
        shards.append(ShardInfo(name, position - start, (dest / name).stat().st_size, sha256_of(dest / name), chunks, end))
    examples = [{"path": str(p), "reason": r} for p, r in list(bad)[:20]]
    manifest = Manifest(split, list(classes), chunk_samples, shards, len(bad), examples)
    (dest / MANIFEST).write_text(manifest.to_json())
    return manifest


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(2**20):
            digest.update(block)
    return digest.hexdigest()


def chunk_bounds(shard: ShardInfo, chunk: int) -> tuple[int, int]:
    """Byte range [start, end) of one chunk of a shard."""
    start = shard.chunks[chunk]
    return start, shard.chunks[chunk + 1] if chunk + 1 < len(shard.chunks) else shard.end


def chunk_size(manifest: Manifest, shard: ShardInfo, chunk: int) -> int:
    return min(manifest.chunk_samples, shard.samples - chunk * manifest.chunk_samples)


def parse_members(blob: bytes) -> Iterator[tuple[str, memoryview]]:
    """(name, data) of each tar member in ``blob``, which starts at a member's header (a chunk's bytes)."""
    view, offset = memoryview(blob), 0
    while offset + BLOCK <= len(view):
        header = bytes(view[offset : offset + BLOCK])
        if header == b"\0" * BLOCK:
            return
        name = header[:100].split(b"\0", 1)[0].decode()
        try:
            size = int(header[124:136].split(b"\0", 1)[0].strip() or b"0", 8)
        except ValueError:
            raise UserError(f"corrupt shard: bad tar header at byte {offset} of a chunk") from None
        data_start = offset + BLOCK
        yield name, view[data_start : data_start + size]
        offset = data_start + -(-size // BLOCK) * BLOCK


def parse_samples(blob: bytes) -> list[tuple[bytes, int]]:
    """(image bytes, class index) of each sample in a chunk's bytes, in order."""
    samples: list[tuple[bytes, int]] = []
    image: bytes | None = None
    key = None
    for name, data in parse_members(blob):
        stem, _, extension = name.rpartition(".")
        if extension == LABEL_EXTENSION:
            if image is None or stem != key:
                raise UserError(f"corrupt shard: label {name} without its image")
            samples.append((image, int(bytes(data))))
            image = None
        else:
            key, image = stem, bytes(data)
    return samples


def read_chunk(folder: Path, manifest: Manifest, shard: int, chunk: int, opener=open) -> list[tuple[bytes, int]]:
    """One chunk's samples with a single contiguous read (``opener``: the benchmark's simulated remote file system)."""
    info = manifest.shards[shard]
    start, end = chunk_bounds(info, chunk)
    with opener(folder / info.name, "rb") as handle:
        handle.seek(start)
        blob = handle.read(end - start)
    samples = parse_samples(blob)
    if len(samples) != chunk_size(manifest, info, chunk):
        raise UserError(
            f"corrupt shard {info.name}: chunk {chunk} holds {len(samples)} samples, the manifest says {chunk_size(manifest, info, chunk)}"
        )
    return samples


def check_files(folder: Path, manifest: Manifest) -> None:
    """Every shard present with the size the manifest records (a cheap check that does not grow with the images)."""
    problems = []
    for shard in manifest.shards:
        path = folder / shard.name
        if not path.is_file():
            problems.append(f"{shard.name} is missing")
        elif path.stat().st_size != shard.bytes:
            problems.append(f"{shard.name} has {path.stat().st_size} bytes, the manifest says {shard.bytes}")
    if problems:
        raise UserError(f"sharded split '{manifest.split}' at {folder}: {'; '.join(problems[:5])}")


def iter_all(folder: Path, manifest: Manifest) -> Iterable[tuple[bytes, int]]:
    """Every sample in written order (tests, tools)."""
    for s, shard in enumerate(manifest.shards):
        for c in range(len(shard.chunks)):
            yield from read_chunk(folder, manifest, s, c)
