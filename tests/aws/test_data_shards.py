"""The data step's sharded format against the emulator: shards in parts, manifest last, FastFile, the guard."""

from __future__ import annotations

import io
import logging
import os
import subprocess
import sys
from pathlib import Path

import boto3
import numpy as np
import pytest
from PIL import Image

from deploy import data_upload, pipeline
from deploy.config import load_config
from deploy.data import choose_format, prepare, shard_if_chosen, upload
from deploy.rules import RequestRules
from image_classifier.data.shards import MANIFEST, Manifest, parse_samples
from image_classifier.errors import UserError
from tests.aws.conftest import BUCKET, REGION, ROLE
from tests.helpers import REPO_ROOT

pytestmark = pytest.mark.aws

PARTS = 5 * 2**20  # S3's smallest part


@pytest.fixture
def photos(tmp_path) -> Path:
    """Three classes of noisy 400 px PNGs (≈ 0.5 MB each: a train shard well over one part) and one corrupt file."""
    rng = np.random.default_rng(0)
    source = tmp_path / "photos"
    for c, name in enumerate(("ant", "bee", "cat")):
        (source / name).mkdir(parents=True)
        for i in range(8):
            pixels = rng.integers(0, 255, (400, 400, 3), dtype=np.uint8) // (c + 1)
            Image.fromarray(pixels).save(source / name / f"{i:02d}.png", compress_level=0)
    (source / "bee" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    return source


@pytest.fixture
def s3(aws):
    client = boto3.client("s3", region_name=REGION)
    client.create_bucket(Bucket=BUCKET)
    return client


def _keys(s3, prefix: str) -> list[str]:
    return sorted(o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix=prefix).get("Contents", []))


def test_auto_shards_from_the_threshold_and_the_user_can_choose(photos, tmp_path, monkeypatch):
    prepared = prepare(str(photos), tmp_path / "work", seed=1)
    assert choose_format("auto", prepared) == "folders" and choose_format("shards", prepared) == "shards"
    monkeypatch.setattr("deploy.data.SHARD_THRESHOLD", 10)
    assert choose_format("auto", prepared) == "shards" and choose_format("folders", prepared) == "folders"


def test_shards_go_up_in_parts_with_the_key_manifest_last_and_a_rerun_sends_nothing(aws, s3, photos, tmp_path, monkeypatch, caplog):
    caplog.set_level(logging.INFO)
    monkeypatch.setenv("IMAGE_CLASSIFIER_PROGRESS", "lines")
    monkeypatch.setattr(data_upload, "MULTIPART_BYTES", PARTS)
    key_arn = boto3.client("kms", region_name=REGION).create_key()["KeyMetadata"]["Arn"]
    prepared = prepare(str(photos), tmp_path / "work", seed=1)
    shards = shard_if_chosen(prepared, "shards", tmp_path / "work" / "shards")
    assert sorted(shards) == ["train", "validation"]
    manifest = Manifest.from_json((shards["train"] / MANIFEST).read_text())
    assert manifest.bad_images == 1 and "broken.jpg" in manifest.bad_examples[0]["path"]  # the verdict travels
    assert manifest.samples == prepared.counts["train"] and manifest.shards[0].bytes > PARTS
    sent: list[tuple[str, dict]] = []  # every request the client makes, as botocore is about to send it
    s3.meta.events.register("before-call.s3.*", lambda params, model, **_: sent.append((model.name, params)))

    result = upload(prepared, s3, BUCKET, "p/data", kms_key_id=key_arn, sharded=shards)

    assert _keys(s3, "p/data/train/") == ["p/data/train/manifest.json", "p/data/train/shard-000000.tar"]
    assert len(_keys(s3, "p/data/test/")) == prepared.counts["test"]  # test stays images: transform and explain read them
    head = s3.head_object(Bucket=BUCKET, Key="p/data/train/shard-000000.tar")
    assert head["Metadata"]["sha256"] == manifest.shards[0].sha256 and head["SSEKMSKeyId"] == key_arn
    train = [(name, params) for name, params in sent if "/train/" in params.get("url_path", "") or "/train/" in str(params)]
    started = [params for name, params in train if name == "CreateMultipartUpload"]
    assert len(started) == 1 and "shard-000000.tar" in str(started[0]), [name for name, _ in train]
    assert started[0]["headers"].get("x-amz-server-side-encryption") == "aws:kms"
    assert sum(name == "UploadPart" for name, _ in train) == -(-manifest.shards[0].bytes // PARTS)
    writes = [
        str(params) for name, params in train if name in ("PutObject", "CreateMultipartUpload", "UploadPart", "CompleteMultipartUpload")
    ]
    assert "manifest.json" in writes[-1] and all("manifest.json" not in w for w in writes[:-1])  # the manifest last
    body = s3.get_object(Bucket=BUCKET, Key="p/data/train/shard-000000.tar")["Body"].read()
    assert len(parse_samples(body)) == manifest.samples  # what a job reads back parses whole

    done = [r.getMessage() for r in caplog.records if r.getMessage().startswith("event=progress_done what=upload ")]
    assert done and f" items={result.uploaded} " in done[0] and " unit=B " in done[0], done  # bytes, objects, rate

    again = upload(prepared, s3, BUCKET, "p/data", kms_key_id=key_arn, sharded=shards)
    assert again.uploaded == 0 and again.skipped == result.uploaded  # shards re-written from the same images: same bytes


def test_switching_a_prefix_from_folders_to_shards_needs_prune(aws, s3, photos, tmp_path):
    prepared = prepare(str(photos), tmp_path / "work", seed=1)
    upload(prepared, s3, BUCKET, "p/data")
    shards = shard_if_chosen(prepared, "shards", tmp_path / "work" / "shards")
    with pytest.raises(UserError, match=r"objects under s3://.*/p/data are not in this data set"):
        upload(prepared, s3, BUCKET, "p/data", sharded=shards)
    result = upload(prepared, s3, BUCKET, "p/data", sharded=shards, prune=True)
    assert result.deleted == prepared.counts["train"] + prepared.counts["validation"]
    assert _keys(s3, "p/data/validation/") == ["p/data/validation/manifest.json", "p/data/validation/shard-000000.tar"]


def test_the_cli_writes_shard_folders_a_laptop_trains_from(photos, tmp_path):
    command = [
        sys.executable,
        "-m",
        "deploy.data",
        "--data",
        str(photos),
        "--work-dir",
        str(tmp_path / "w"),
        "--format",
        "shards",
        "--seed",
        "1",
    ]
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120, env=os.environ)
    assert result.returncode == 0, result.stderr[-2000:]
    assert " format=shards " in result.stdout and f"dir_train={tmp_path / 'w' / 'shards' / 'train'}" in result.stdout
    assert (tmp_path / "w" / "shards" / "train" / MANIFEST).is_file()


def _dry_run(tmp_path, data: Path, **overrides):
    (data / "bee" / "broken.jpg").unlink(missing_ok=True)  # the pipeline's split seed may leave it a class's only validation image
    cfg = load_config(overrides={"region": REGION, "role_arn": ROLE, "bucket": BUCKET, "runs_dir": str(tmp_path), **overrides}, environ={})
    ctx = pipeline.context(cfg, dry_run=True, data=str(data))
    pipeline.run(["data", "tune", "train"], ctx)
    return ctx.aws.dry_run.calls


@pytest.mark.parametrize(("data_format", "fast_file"), [("shards", {"train", "validation"}), ("auto", set())])
def test_jobs_read_shards_with_fast_file_and_folders_in_file_mode(aws, photos, tmp_path, data_format, fast_file):
    calls = _dry_run(tmp_path, photos, data_format=data_format)
    tuning = next(c["request"] for c in calls if c["operation"] == "CreateHyperParameterTuningJob")
    final = next(c["request"] for c in calls if c["operation"] == "CreateTrainingJob")
    for channels in (tuning["TrainingJobDefinition"]["InputDataConfig"], final["InputDataConfig"]):
        modes = {c["ChannelName"]: c.get("InputMode", "File") for c in channels}
        assert {n for n, m in modes.items() if m == "FastFile"} == fast_file, modes
        assert all(m == "File" for n, m in modes.items() if n not in fast_file), modes  # test (and pretrained): File
    assert {c["ChannelName"] for c in final["InputDataConfig"]} >= {"train", "validation", "test"}
    rules = RequestRules()
    assert rules.refusals("sagemaker", "CreateHyperParameterTuningJob", tuning) == []
    assert rules.refusals("sagemaker", "CreateTrainingJob", final) == []


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"InputMode": "Pipe"}, "InputDataConfig[0] (train).InputMode: Pipe streams records and the trainer reads files"),
        (
            {"DataSource": {"S3DataSource": {"S3Uri": "s3://b/p/", "S3DataType": "S3Prefix", "S3DataDistributionType": "ShardedByS3Key"}}},
            "ShardedByS3Key gives each host different images",
        ),
    ],
)
def test_the_guard_refuses_input_the_trainer_cannot_read(aws, photos, tmp_path, change, expected):
    """A request as the SDK built it (the dry run's), then changed as a user driving the image might."""
    calls = _dry_run(tmp_path, photos, data_format="shards")
    final = next(c["request"] for c in calls if c["operation"] == "CreateTrainingJob")
    final["InputDataConfig"][0].update(change)
    tuning = next(c["request"] for c in calls if c["operation"] == "CreateHyperParameterTuningJob")
    tuning["TrainingJobDefinition"]["InputDataConfig"][0].update(change)
    for operation, request in (("CreateTrainingJob", final), ("CreateHyperParameterTuningJob", tuning)):
        problems = RequestRules().refusals("sagemaker", operation, request)
        assert any(expected in p for p in problems), problems


def test_a_shard_read_back_decodes(aws, s3, photos, tmp_path):
    """The bytes in a shard are the image's own: a decoder reads each back (what the job's first epoch does)."""
    prepared = prepare(str(photos), tmp_path / "work", seed=1)
    shards = shard_if_chosen(prepared, "shards", tmp_path / "work" / "shards")
    upload(prepared, s3, BUCKET, "p/data", sharded=shards)
    body = s3.get_object(Bucket=BUCKET, Key="p/data/validation/shard-000000.tar")["Body"].read()
    sizes = {Image.open(io.BytesIO(bytes(image))).size for image, _ in parse_samples(body)}
    assert sizes == {(400, 400)}
