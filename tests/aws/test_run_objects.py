"""Everything a run writes to S3 is the run's: written with its KMS key, and its scratch removed by cleanup.

Scratch: the async step's request objects and answers (the answer is kept in the run's state.json)
and Clarify's copies of test images; results (reports, Clarify's analysis, models) stay.
"""

from __future__ import annotations

import io
import json
import tarfile

import boto3

from deploy import pipeline
from deploy.config import load_config
from deploy.state import RunState
from tests.aws.conftest import BUCKET, REGION, ROLE

KEY_ARN = "arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"
MODEL_DATA = f"s3://{BUCKET}/seed/model.tar.gz"


def _context(tmp_path, run_id: str, **overrides):
    cfg = load_config(
        overrides={"region": REGION, "role_arn": ROLE, "bucket": BUCKET, "runs_dir": str(tmp_path), "stream_logs": False, **overrides},
        environ={},
    )
    channels = {c: f"s3://{BUCKET}/data/{c}/" for c in ("train", "validation", "test")}
    RunState(run_id=run_id, channels=channels, final_model_data=MODEL_DATA).save(cfg.runs_dir)
    return pipeline.context(cfg, run_id=run_id, yes=True)


def test_clarifys_copies_of_the_test_images_carry_the_runs_key(gate, tmp_path):
    s3 = boto3.client("s3", region_name=REGION)
    card, buffer = json.dumps({"classes": ["ant", "bee"]}).encode(), io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        info = tarfile.TarInfo("model_card.json")
        info.size = len(card)
        archive.addfile(info, io.BytesIO(card))
    s3.put_object(Bucket=BUCKET, Key="seed/model.tar.gz", Body=buffer.getvalue())
    for name in ("ant", "bee"):
        s3.put_object(Bucket=BUCKET, Key=f"data/test/{name}/0.png", Body=b"png")
    pipeline.run(["clarify"], _context(tmp_path, "kms", kms_key_id=KEY_ARN))
    copies = s3.list_objects_v2(Bucket=BUCKET, Prefix="image-classifier/runs/kms/clarify-input/")["Contents"]
    assert len(copies) == 2
    for copy in copies:
        head = s3.head_object(Bucket=BUCKET, Key=copy["Key"])
        assert (head.get("ServerSideEncryption"), head.get("SSEKMSKeyId")) == ("aws:kms", KEY_ARN), copy["Key"]


def test_cleanup_removes_the_runs_scratch_and_keeps_its_results(aws, tmp_path, capsys):
    s3 = boto3.client("s3", region_name=REGION)
    scratch = [
        "image-classifier/runs/r1/async-input/ab12-cat.jpg",
        "image-classifier/runs/r1/async/ic-async-r1-1/output/1.out",
        "image-classifier/runs/r1/async/ic-async-r1-1/output-failures/2.out",
        "image-classifier/runs/r1/clarify-input/0.png",
    ]
    kept = [
        "image-classifier/runs/r1/clarify/analysis.json",
        "image-classifier/runs/r1/final/ic-final-r1-1/output/model.tar.gz",
        "image-classifier/runs/r2/async-input/cd34-dog.jpg",  # another run's
    ]
    for key in scratch + kept:
        s3.put_object(Bucket=BUCKET, Key=key, Body=b"x")
    pipeline.run(["cleanup"], _context(tmp_path, "r1"))
    left = {o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix="image-classifier/runs/").get("Contents", [])}
    assert left == set(kept)
    assert "event=scratch_deleted run_id=r1 objects=4 folders=async-input,async,clarify-input" in capsys.readouterr().out
    everything = _context(tmp_path, "r1")
    everything.all_runs = True
    pipeline.run(["cleanup"], everything)
    left = {o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix="image-classifier/runs/").get("Contents", [])}
    assert left == set(kept[:2])
