"""The data step: a folder, a zip or a zip URL becomes checked train/validation/test channels in S3.

    python -m deploy.data --data https://example.com/dogImages.zip --work-dir build/data --bucket B --prefix dogs
    python -m deploy.data --data ~/photos --work-dir build/data        # prepare and check only

Layouts, found in ``--data`` itself or in the one folder inside it (as zips usually have):

- already split: ``train/`` plus ``valid/``, ``validation/`` or ``val/``, optional ``test/``, each
  holding ``<class>/<images>``; the dog-breed zip unpacks to ``dogImages/{train,valid,test}/``.
- unsplit: class folders directly. Each class is split on its own (stratified), seeded by
  ``seed`` and the class name, into ``WORK/channels/{train,validation,test}`` with hard links
  (copies across file systems); the user's files are never moved. Rule, per class of n images:
  validation = n × valid_fraction and test = n × test_fraction, rounded, each at least 1 (test
  only when test_fraction > 0), and at least one image left to train. So every class is in
  every split: a class needs 3 images (2 with test_fraction=0), or the step fails naming it.

Before anything is uploaded, the trainer's own pre-flight runs on the result through the
package's functions: class folders and empty classes (``index_split``), one class set across
splits (``check_same_classes``), every image decoded once (``find_unreadable``), failing above
``max_bad_fraction`` (the trainer's default) or when a class is left with no readable image.
Unreadable files under the threshold are reported and not uploaded.

Upload (``deploy.data_upload``): ``s3://BUCKET/PREFIX/<channel>/<class>/<file>``, or a sharded
channel's ``shard-NNNNNN.tar`` and ``manifest.json`` (``deploy.data_shards``). A URL is downloaded once into
``WORK/downloads`` and reused by later runs; delete it to fetch again.
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import shutil
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from deploy.data_sources import IGNORED_NAMES, materialise
from deploy.data_upload import UploadResult, shard_files, sync
from image_classifier import params
from image_classifier.data.discovery import check_same_classes, image_extensions, index_split
from image_classifier.data.loading import find_unreadable
from image_classifier.data.readability import keep_readable, log_unreadable
from image_classifier.data.shards import write_shards
from image_classifier.errors import UserError
from image_classifier.hyperparameters import Hyperparameters
from image_classifier.metrics import format_line

log = logging.getLogger(__name__)

DEFAULT_MAX_BAD_FRACTION: float = Hyperparameters.model_fields["max_bad_fraction"].default
SHA256_METADATA = "sha256"


@dataclass(frozen=True)
class Layout:
    kind: str  # "split" | "unsplit"
    root: Path  # the folder holding train/ valid/ [test/], or the class folders
    splits: dict[str, Path]  # channel -> folder; empty when unsplit


@dataclass(frozen=True)
class PreparedData:
    """Checked channels, ready to upload. ``files`` are the readable images of each channel."""

    layout: str
    channels: dict[str, Path]  # train, validation, optional test
    classes: tuple[str, ...]  # in index order (sorted folder names), as the trainer numbers them
    files: dict[str, tuple[Path, ...]]
    unreadable: tuple[Path, ...]  # found by the pre-flight; skipped by training, never uploaded

    @property
    def counts(self) -> dict[str, int]:
        return {channel: len(paths) for channel, paths in self.files.items()}


# --- layout ----------------------------------------------------------------------------------


def _visible(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if not p.name.startswith(".") and p.name not in IGNORED_NAMES)


def _holds_images(folder: Path) -> bool:
    extensions = image_extensions()
    return any(p.is_file() and p.suffix.lower() in extensions for p in _visible(folder))


def _first_dir(root: Path, names: tuple[str, ...]) -> Path | None:
    return next((root / n for n in names if (root / n).is_dir()), None)


def detect_layout(folder: Path) -> Layout:
    """Already split (train/ + a validation folder) or class folders; one wrapper folder is looked through."""
    if not folder.is_dir():
        raise UserError(f"{folder} is not a folder")
    root = folder
    entries = _visible(folder)
    dirs = [p for p in entries if p.is_dir()]
    if len(dirs) == 1 and not _holds_images(folder) and not _holds_images(dirs[0]) and dirs[0].name != params.TRAIN_CHANNEL:
        root = dirs[0]
    train = _first_dir(root, (params.TRAIN_CHANNEL,))
    valid = _first_dir(root, params.VALIDATION_ALIASES)
    if train is not None and valid is not None:
        splits = {params.TRAIN_CHANNEL: train, params.VALIDATION_CHANNEL: valid}
        if (test := _first_dir(root, (params.TEST_CHANNEL,))) is not None:
            splits[params.TEST_CHANNEL] = test
        return Layout("split", root, splits)
    if train is not None and not _holds_images(train):
        raise UserError(
            f"{root} has train/ but no {'/, '.join(params.VALIDATION_ALIASES)}/ beside it; "
            "give a validation split, or class folders only to have them split"
        )
    if not any(p.is_dir() for p in _visible(root)):
        raise UserError(f"{folder} holds neither class folders nor train/ and valid/ folders")
    return Layout("unsplit", root, {})


# --- split -----------------------------------------------------------------------------------


def _rounded(n: int, fraction: float) -> int:
    return int(n * fraction + 0.5)


def split_counts(n: int, valid_fraction: float, test_fraction: float) -> tuple[int, int]:
    """(validation, test) images for a class of ``n``: see the rule in the module docstring."""
    least_test = 1 if test_fraction > 0 else 0
    n_test = max(least_test, _rounded(n, test_fraction))
    n_valid = max(1, _rounded(n, valid_fraction))
    while n_valid + n_test > n - 1 and n_test > least_test:
        n_test -= 1
    while n_valid + n_test > n - 1 and n_valid > 1:
        n_valid -= 1
    return n_valid, n_test


def _place(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
    except OSError:  # another file system, or links not allowed: copy
        shutil.copy2(source, target)


def split_folder(root: Path, dest: Path, *, seed: int, valid_fraction: float, test_fraction: float) -> dict[str, Path]:
    """Stratified, seeded split of the class folders in ``root`` into ``dest/<channel>/<class>/``."""
    index = index_split(str(root), root)  # the trainer's discovery: class folders, image files, empty classes
    by_class: dict[int, list[Path]] = {}
    for path, label in index.samples:
        by_class.setdefault(label, []).append(path)
    needed = 3 if test_fraction > 0 else 2
    small = {index.classes[label]: len(paths) for label, paths in by_class.items() if len(paths) < needed}
    if small:
        raise UserError(
            f"classes with fewer than {needed} images cannot be split into {'train/validation/test' if needed == 3 else 'train/validation'}: "
            f"{small}; add images{' or set test_fraction=0' if needed == 3 else ''}"
        )
    if dest.exists():
        shutil.rmtree(dest)
    channels = [params.TRAIN_CHANNEL, params.VALIDATION_CHANNEL] + ([params.TEST_CHANNEL] if test_fraction > 0 else [])
    for label, paths in by_class.items():
        name = index.classes[label]
        order = list(paths)
        random.Random(f"{seed}/{name}").shuffle(order)
        n_valid, n_test = split_counts(len(order), valid_fraction, test_fraction)
        parts = {
            params.VALIDATION_CHANNEL: order[:n_valid],
            params.TEST_CHANNEL: order[n_valid : n_valid + n_test],
            params.TRAIN_CHANNEL: order[n_valid + n_test :],
        }
        for channel, chosen in parts.items():
            for path in chosen:
                _place(path, dest / channel / name / path.relative_to(root / name))
    log.info(format_line("split", classes=len(index.classes), images=len(index.samples), seed=seed, dest=str(dest)))
    return {channel: dest / channel for channel in channels}


# --- pre-flight ------------------------------------------------------------------------------


def preflight(channels: Mapping[str, Path], layout: str, *, max_bad_fraction: float = DEFAULT_MAX_BAD_FRACTION) -> PreparedData:
    """The trainer's checks, on the channels as the job will see them; raise ``UserError`` naming what is wrong."""
    indices = [index_split(channel, folder) for channel, folder in channels.items()]
    check_same_classes(indices[0], *indices[1:])
    every = [path for index in indices for path, _ in index.samples]
    bad = find_unreadable(every, os.cpu_count() or 1)
    log_unreadable(bad)
    log.info(format_line("preflight", images=len(every), bad_images=len(bad)))
    kept = keep_readable(indices, bad, max_bad_fraction)
    files = {index.split: tuple(path for path, _ in samples) for index, samples in zip(indices, kept, strict=True)}
    return PreparedData(layout, dict(channels), indices[0].classes, files, tuple(sorted(bad)))


def prepare(
    source: str,
    work_dir: Path,
    *,
    seed: int = 0,
    valid_fraction: float = 0.1,
    test_fraction: float = 0.1,
    max_bad_fraction: float = DEFAULT_MAX_BAD_FRACTION,
) -> PreparedData:
    """Folder, zip or URL -> checked channels (split when needed), nothing uploaded."""
    if not 0 < valid_fraction < 1 or not 0 <= test_fraction < 1 or valid_fraction + test_fraction >= 1:
        raise UserError(f"need 0 < valid_fraction, 0 <= test_fraction, sum < 1; got {valid_fraction} and {test_fraction}")
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    layout = detect_layout(materialise(source, work_dir))
    if layout.kind == "split":
        channels = layout.splits
    else:
        channels = split_folder(layout.root, work_dir / "channels", seed=seed, valid_fraction=valid_fraction, test_fraction=test_fraction)
    prepared = preflight(channels, layout.kind, max_bad_fraction=max_bad_fraction)
    log.info(
        format_line(
            "data_prepared", layout=layout.kind, classes=len(prepared.classes), unreadable=len(prepared.unreadable), **prepared.counts
        )
    )
    return prepared


# --- format: folders or shards ------------------------------------------------------------
# The data step's sharded format: train and validation as tar shards with a manifest, for large sets.
#
# A folder of a million photos costs at every step that touches each file: SageMaker's File mode copies
# the objects one by one before the container starts, FastFile opens each lazily (~10 ms a first byte),
# the upload is a million PUTs. Shards (``image_classifier.data.shards``: WebDataset-layout tars of a few
# hundred MB, a manifest per split with counts, chunk offsets, sha256 and the bad-image verdicts) turn
# that into a few hundred sequential objects, read with ``InputMode=FastFile`` (``deploy.sdk``).
#
# When: ``data_format = "auto"`` shards from ``SHARD_THRESHOLD`` images in train + validation. Below it
# a folder costs little: File mode copies it before the container starts (so no per-file latency while
# training), the trainer's folder start-up of 10,000 images takes 2.8 s on 2 cores
# (``local/bench/results/data.md``), and the objects stay browsable in the S3 console; from 100,000 it
# takes 26 s and grows linearly, and behind FastFile a folder keeps 8-9 % of its rate where shards keep
# 99-105 %. ``folders`` and ``shards`` choose either way.
#
# The test split stays a folder of images in both formats: batch transform, the explain step, Clarify and
# the query step read individual images from it, and the final job reads it once (File mode).

DataFormat = Literal["auto", "folders", "shards"]
SHARD_THRESHOLD = 10_000  # images in train + validation from which "auto" writes shards
SHARDED_CHANNELS = ("train", "validation")


def choose_format(data_format: DataFormat, prepared: PreparedData) -> Literal["folders", "shards"]:
    """The format the upload uses, and a log line saying why."""
    images = sum(len(prepared.files.get(c, ())) for c in SHARDED_CHANNELS)
    if data_format == "auto":
        chosen: Literal["folders", "shards"] = "shards" if images >= SHARD_THRESHOLD else "folders"
        why = f"auto_threshold_{SHARD_THRESHOLD}"
    else:
        chosen, why = data_format, "configured"
    log.info(format_line("data_format", format=chosen, images=images, reason=why))
    return chosen


def write_shard_channels(prepared: PreparedData, dest: Path, *, seed: int = 0) -> dict[str, Path]:
    """Write the sharded channels' readable images as shards under ``dest/<channel>``; channel -> folder.

    The images are shuffled (seeded by ``seed`` and the channel) so that every shard holds every class;
    the unreadable files the pre-flight found go in the manifest's verdicts, not in the shards.
    """
    folders: dict[str, Path] = {}
    label = {name: index for index, name in enumerate(prepared.classes)}
    for channel in SHARDED_CHANNELS:
        if channel not in prepared.channels:
            continue
        root = prepared.channels[channel]
        samples = [(path, label[path.relative_to(root).parts[0]]) for path in prepared.files[channel]]
        bad = [(path, "unreadable") for path in prepared.unreadable if path.is_relative_to(root)]
        manifest = write_shards(samples, prepared.classes, dest / channel, split=channel, seed=seed, bad=bad)
        log.info(format_line("shards_written", channel=channel, images=manifest.samples, shards=len(manifest.shards), bad_images=len(bad)))
        folders[channel] = dest / channel
    return folders


def shard_if_chosen(prepared: PreparedData, data_format: DataFormat, dest: Path, *, seed: int = 0) -> dict[str, Path]:
    """The sharded channels' shard folders; empty when the format chosen is folders."""
    return write_shard_channels(prepared, dest, seed=seed) if choose_format(data_format, prepared) == "shards" else {}


# --- upload ----------------------------------------------------------------------------------


def upload(
    prepared: PreparedData,
    s3_client: Any,
    bucket: str,
    prefix: str,
    *,
    kms_key_id: str | None = None,
    prune: bool = False,
    workers: int | None = None,
    sharded: Mapping[str, Path] | None = None,
) -> UploadResult:
    """Sync each channel to ``s3://bucket/prefix/<channel>/``: its readable images, or its shards and manifest
    when ``sharded`` names the channel's shard folder (``deploy.data_shards``); unchanged objects are skipped."""
    plan: dict[str, dict[str, tuple[Path, str | None]]] = {}
    for channel, folder in prepared.channels.items():
        if sharded and channel in sharded:
            plan[channel] = {path.name: (path, digest or None) for path, digest in shard_files(sharded[channel])}
        else:
            plan[channel] = {path.relative_to(folder).as_posix(): (path, None) for path in prepared.files[channel]}
    return sync(plan, s3_client, bucket, prefix, kms_key_id=kms_key_id, prune=prune, workers=workers)


# --- command line ----------------------------------------------------------------------------


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m deploy.data", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", required=True, help="a folder, a .zip, or an http(s) URL of a zip")
    parser.add_argument("--work-dir", type=Path, required=True, help="where downloads, unpacked zips and split channels go")
    parser.add_argument("--bucket", help="upload to this S3 bucket (omit to prepare and check only)")
    parser.add_argument("--prefix", default="data", help="S3 key prefix; channels go under PREFIX/<channel>/ (default: data)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the split of unsplit class folders (default: 0)")
    parser.add_argument("--valid-fraction", type=float, default=0.1)
    parser.add_argument("--test-fraction", type=float, default=0.1, help="0 for no test split")
    parser.add_argument("--max-bad-fraction", type=float, default=DEFAULT_MAX_BAD_FRACTION, help="the trainer's default unless changed")
    parser.add_argument("--kms-key-id", help="encrypt uploads with this KMS key (SSE-KMS)")
    parser.add_argument("--prune", action="store_true", help="delete objects under the channel prefixes that are not in the data")
    parser.add_argument(
        "--format",
        choices=["auto", "folders", "shards"],
        default="auto",
        help=f"train and validation as image folders or as tar shards with a manifest (auto: shards from {SHARD_THRESHOLD:,} images)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        prepared = prepare(
            args.data,
            args.work_dir,
            seed=args.seed,
            valid_fraction=args.valid_fraction,
            test_fraction=args.test_fraction,
            max_bad_fraction=args.max_bad_fraction,
        )
        summary: dict[str, str | int] = {"layout": prepared.layout, "classes": len(prepared.classes), **prepared.counts}
        summary["unreadable"] = len(prepared.unreadable)
        sharded = shard_if_chosen(prepared, args.format, args.work_dir / "shards", seed=args.seed)
        summary["format"] = "shards" if sharded else "folders"
        if args.bucket:
            import boto3
            from botocore.config import Config

            s3 = boto3.client("s3", config=Config(max_pool_connections=16))
            result = upload(prepared, s3, args.bucket, args.prefix, kms_key_id=args.kms_key_id, prune=args.prune, sharded=sharded)
            summary.update(uploaded=result.uploaded, skipped=result.skipped, bytes=result.bytes_uploaded, deleted=result.deleted)
            summary.update({f"s3_{channel}": uri for channel, uri in result.channels.items()})
        else:
            summary.update({f"dir_{channel}": str(sharded.get(channel, folder)) for channel, folder in prepared.channels.items()})
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(format_line("data_ready", **summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
