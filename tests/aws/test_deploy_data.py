"""deploy.data's upload against a local AWS emulator (moto in server mode on 127.0.0.1)."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
from pathlib import Path

import boto3
import pytest
from PIL import Image

from deploy.data import prepare, upload
from image_classifier.errors import UserError
from image_classifier.modeling.weights_io import sha256_of
from tests.helpers import REPO_ROOT

pytestmark = pytest.mark.aws

CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
_BUCKETS = itertools.count()


@pytest.fixture
def endpoint(aws):
    """The session's emulator (tests/aws/conftest.py), reset for this test."""
    return aws.url


def _client(endpoint: str, service: str):
    return boto3.client(
        service,
        endpoint_url=endpoint,
        region_name=CREDENTIALS["AWS_DEFAULT_REGION"],
        aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
    )


@pytest.fixture
def s3(endpoint):
    return _client(endpoint, "s3")


@pytest.fixture
def bucket(s3):
    name = f"data-step-{next(_BUCKETS)}"
    s3.create_bucket(Bucket=name)
    return name


@pytest.fixture
def prepared(tmp_path):
    """Three classes of small real PNGs, unsplit, plus one corrupt JPEG that must never be uploaded."""
    source = tmp_path / "photos"
    for c, name in enumerate(("ant", "bee", "cat")):
        (source / name).mkdir(parents=True)
        for i in range(12):
            Image.new("RGB", (8 + i, 8), (60 * c, 20 * i, 90)).save(source / name / f"{i:02d}.png")
    (source / "ant" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    return prepare(str(source), tmp_path / "work", seed=4)


def _objects(s3, bucket: str) -> dict[str, int]:
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket)
    return {item["Key"]: item["Size"] for page in pages for item in page.get("Contents", [])}


def _expected_keys(prepared, prefix: str) -> dict[str, Path]:
    return {
        f"{prefix}/{channel}/{path.relative_to(prepared.channels[channel]).as_posix()}": path
        for channel, files in prepared.files.items()
        for path in files
    }


def test_upload_then_unchanged_reupload_skips_everything(s3, bucket, prepared):
    expected = _expected_keys(prepared, "dogs/data")
    total = sum(p.stat().st_size for p in expected.values())

    first = upload(prepared, s3, bucket, "dogs/data/")

    assert first.channels == {ch: f"s3://{bucket}/dogs/data/{ch}/" for ch in ("train", "validation", "test")}
    assert (first.uploaded, first.skipped, first.bytes_uploaded) == (36, 0, total)
    assert _objects(s3, bucket) == {key: path.stat().st_size for key, path in expected.items()}
    assert not any(key.endswith("broken.jpg") for key in _objects(s3, bucket))
    key, path = next(iter(expected.items()))
    head = s3.head_object(Bucket=bucket, Key=key)
    assert head["Metadata"] == {"sha256": sha256_of(path)} and head["ContentType"] == "image/png"
    assert s3.get_object(Bucket=bucket, Key=key)["Body"].read() == path.read_bytes()

    second = upload(prepared, s3, bucket, "dogs/data")
    assert (second.uploaded, second.skipped, second.bytes_uploaded) == (0, 36, 0)


def test_changed_files_are_uploaded_again(s3, bucket, prepared):
    upload(prepared, s3, bucket, "p")
    keys = sorted(_expected_keys(prepared, "p").items())
    (local_key, local_path), (remote_key, remote_path) = keys[0], keys[-1]
    Image.new("RGB", (30, 30), (1, 2, 3)).save(local_path)  # changed on disk (size differs)
    stale_bytes = bytes(remote_path.stat().st_size)  # same size in S3, different content and checksum
    s3.put_object(Bucket=bucket, Key=remote_key, Body=stale_bytes, Metadata={"sha256": "0" * 64})

    result = upload(prepared, s3, bucket, "p")

    assert (result.uploaded, result.skipped) == (2, 34)
    assert result.bytes_uploaded == local_path.stat().st_size + remote_path.stat().st_size
    for key, path in ((local_key, local_path), (remote_key, remote_path)):
        assert s3.get_object(Bucket=bucket, Key=key)["Body"].read() == path.read_bytes()


def test_kms_encryption_and_plain_objects_are_reencrypted(endpoint, s3, bucket, prepared):
    key_arn = _client(endpoint, "kms").create_key()["KeyMetadata"]["Arn"]
    upload(prepared, s3, bucket, "p")  # first without a key

    result = upload(prepared, s3, bucket, "p", kms_key_id=key_arn)

    assert result.uploaded == 36  # identical bytes, but not KMS-encrypted: sent again
    for key in _objects(s3, bucket):
        head = s3.head_object(Bucket=bucket, Key=key)
        assert (head["ServerSideEncryption"], head["SSEKMSKeyId"]) == ("aws:kms", key_arn)
    assert upload(prepared, s3, bucket, "p", kms_key_id=key_arn).skipped == 36


def test_objects_from_an_earlier_split_block_the_upload_until_pruned(s3, bucket, prepared):
    upload(prepared, s3, bucket, "p")
    s3.put_object(Bucket=bucket, Key="p/validation/ant/old-split.png", Body=b"x")
    s3.put_object(Bucket=bucket, Key="p/elsewhere/keep.txt", Body=b"not a channel")

    with pytest.raises(UserError, match=r"1 objects under s3://.*/p are not in this data set .*p/validation/ant/old-split.png"):
        upload(prepared, s3, bucket, "p")

    result = upload(prepared, s3, bucket, "p", prune=True)
    assert (result.deleted, result.skipped) == (1, 36)
    assert "p/validation/ant/old-split.png" not in _objects(s3, bucket) and "p/elsewhere/keep.txt" in _objects(s3, bucket)


def test_missing_bucket_is_a_user_error(s3, prepared):
    with pytest.raises(UserError, match=r"upload to s3://no-such-bucket/p failed: .*NoSuchBucket"):
        upload(prepared, s3, "no-such-bucket", "p")


def test_cli_prepares_and_uploads(endpoint, s3, bucket, tmp_path, prepared):
    env = {**os.environ, **CREDENTIALS, "AWS_ENDPOINT_URL": endpoint}
    command = [sys.executable, "-m", "deploy.data", "--data", str(tmp_path / "photos"), "--work-dir", str(tmp_path / "cli-work")]
    command += ["--bucket", bucket, "--prefix", "cli", "--seed", "4"]

    result = subprocess.run(command, env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)

    assert result.returncode == 0, result.stderr[-3000:]
    line = result.stdout.strip()
    assert line.startswith("event=data_ready layout=unsplit classes=3 ") and " unreadable=1 format=folders uploaded=36 skipped=0 " in line
    assert f"s3_train=s3://{bucket}/cli/train/" in line
    assert len(_objects(s3, bucket)) == 36
