"""Uploading prepared channels to S3: only what changed, large files in parts, nothing stale left behind.

Each object carries its file's sha256 in its metadata; an object with the same size and sha256 (and KMS
encryption, when a key is given) is skipped, so a re-run sends only what changed (a re-written shard
with the same images has the same bytes: ``image_classifier.data.shards``). Files from
``MULTIPART_BYTES`` go up as multipart uploads in parts of that size (boto3's transfer manager),
several parts at once. Objects under a channel prefix that are not in the plan (an earlier split, the
per-image objects of a set now sharded) would leak into the training job: the upload refuses to start
while any exist, unless told to delete them (``prune``). A sharded channel's manifest goes up last, so
a job never reads a manifest that names a shard not yet there.
"""

from __future__ import annotations

import logging
import mimetypes
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from boto3.s3.transfer import TransferConfig
from botocore.exceptions import BotoCoreError, ClientError

from image_classifier.data.shards import MANIFEST, read_manifest
from image_classifier.errors import UserError
from image_classifier.metrics import format_line
from image_classifier.modeling.weights_io import sha256_of
from image_classifier.progress import Progress

log = logging.getLogger(__name__)

SHA256_METADATA = "sha256"
MULTIPART_BYTES = 64 * 2**20  # parts of 64 MB: a 256 MB shard in 4 parts, well above S3's 5 MB minimum
PART_THREADS = 4  # parts of one file in flight at once


@dataclass(frozen=True)
class UploadResult:
    channels: dict[str, str]  # channel -> s3://bucket/prefix/channel/
    uploaded: int
    skipped: int
    bytes_uploaded: int
    deleted: int


def shard_files(folder: Path) -> list[tuple[Path, str]]:
    """A sharded split's files with the sha256 its manifest records (the manifest's own: computed)."""
    manifest = read_manifest(folder)
    return [(folder / shard.name, shard.sha256) for shard in manifest.shards] + [(folder / MANIFEST, "")]


def _join(*parts: str) -> str:
    return "/".join(p.strip("/") for p in parts if p.strip("/"))


def _listed(s3_client: Any, bucket: str, prefix: str) -> dict[str, int]:
    sizes: dict[str, int] = {}
    for page in s3_client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        sizes.update({item["Key"]: item["Size"] for item in page.get("Contents", [])})
    return sizes


def _sync_one(
    s3_client: Any,
    bucket: str,
    key: str,
    path: Path,
    size: int,
    digest: str | None,
    listed_size: int | None,
    kms_key_id: str | None,
    parts: int,
) -> int | None:
    """Upload ``path`` unless the object already holds it; return the bytes sent, or None when skipped."""
    digest = digest or sha256_of(path)
    if listed_size == size:
        head = s3_client.head_object(Bucket=bucket, Key=key)
        same = head.get("Metadata", {}).get(SHA256_METADATA) == digest and head.get("ContentLength") == size
        if same and (kms_key_id is None or head.get("ServerSideEncryption") == "aws:kms"):
            return None
    extra: dict[str, Any] = {"ServerSideEncryption": "aws:kms", "SSEKMSKeyId": kms_key_id} if kms_key_id else {}
    extra.update(Metadata={SHA256_METADATA: digest}, ContentType=mimetypes.guess_type(path.name)[0] or "application/octet-stream")
    transfer = TransferConfig(multipart_threshold=parts, multipart_chunksize=parts, max_concurrency=PART_THREADS, use_threads=True)
    s3_client.upload_file(str(path), bucket, key, ExtraArgs=extra, Config=transfer)
    return size


def sync(
    plan: Mapping[str, Mapping[str, tuple[Path, str | None]]],
    s3_client: Any,
    bucket: str,
    prefix: str,
    *,
    kms_key_id: str | None = None,
    prune: bool = False,
    workers: int | None = None,
    multipart_bytes: int | None = None,
) -> UploadResult:
    """Make ``s3://bucket/prefix/<channel>/`` hold exactly ``plan[channel]`` (key under the channel -> file, its
    sha256 when known); unchanged objects are skipped, manifests go last.

    ``workers`` defaults to the client's connection pool size, so threads never wait for a connection.
    """
    parts = multipart_bytes or MULTIPART_BYTES
    keyed = {_join(prefix, channel, name): item for channel, files in plan.items() for name, item in files.items()}
    last = {key for key in keyed if key.endswith("/" + MANIFEST)}
    try:
        existing: dict[str, int] = {}
        for channel in plan:
            existing.update(_listed(s3_client, bucket, _join(prefix, channel) + "/"))
        stale = sorted(set(existing) - set(keyed))
        if stale and not prune:
            raise UserError(
                f"{len(stale)} objects under s3://{bucket}/{_join(prefix)} are not in this data set and would reach the training job, "
                f"e.g. {stale[:3]}; use another prefix or prune them (--prune)"
            )
        pool_size = workers or s3_client.meta.config.max_pool_connections
        sent: list[int | None] = []
        sizes = {key: path.stat().st_size for key, (path, _) in keyed.items()}  # once per file: a million stats add up
        with (
            ThreadPoolExecutor(max_workers=pool_size) as pool,
            Progress("upload", total=sum(sizes.values()), unit="B", objects=len(keyed)) as progress,
        ):

            def one(key: str) -> int | None:
                path, digest = keyed[key]
                result = _sync_one(s3_client, bucket, key, path, sizes[key], digest, existing.get(key), kms_key_id=kms_key_id, parts=parts)
                progress.update(sizes[key])
                return result

            for batch in ([k for k in keyed if k not in last], sorted(last)):
                sent += pool.map(one, batch)
        for start in range(0, len(stale), 1000):
            answer = s3_client.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": k} for k in stale[start : start + 1000]]})
            if answer.get("Errors"):
                raise UserError(f"could not delete stale objects in s3://{bucket}: {answer['Errors'][:3]}")
    except (ClientError, BotoCoreError) as exc:
        raise UserError(f"upload to s3://{bucket}/{_join(prefix)} failed: {exc}") from exc
    result = UploadResult(
        channels={channel: f"s3://{bucket}/{_join(prefix, channel)}/" for channel in plan},
        uploaded=sum(1 for s in sent if s is not None),
        skipped=sum(1 for s in sent if s is None),
        bytes_uploaded=sum(s for s in sent if s is not None),
        deleted=len(stale),
    )
    log.info(
        format_line("uploaded", bucket=bucket, prefix=prefix, uploaded=result.uploaded, skipped=result.skipped, bytes=result.bytes_uploaded)
    )
    return result
