"""drift against the emulator: captured JSON Lines as SageMaker writes them, read back with the container's codec.

A capture drawn from the test set (its predicted classes, its confidence bins, its images) stays under the
threshold; a capture whose predictions all fall on one class is flagged, and the CLI exits 3.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import random

import boto3
import pytest
from PIL import Image

from deploy import pipeline
from deploy.config import load_config
from deploy.state import RunState
from deploy.steps.drift import DriftFound
from tests.aws import seeding
from tests.aws.conftest import BUCKET, REGION, ROLE

CLASSES = {"cat": (40, 0.9, 0.9), "dog": (40, 0.8, 0.85), "bird": (20, 0.7, 0.6)}  # support, precision, recall
BIN_COUNTS = [0, 0, 0, 0, 0, 0, 2, 3, 5, 6, 8, 10, 14, 22, 30]  # the test set's confidence after temperature


def image(size: int, fmt: str, seed: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (size, size), (seed % 255, 80, 160)).save(out, fmt)
    return out.getvalue()


def seed(tmp_path):
    """A run with its reports and test images, an endpoint (moto's), no capture yet."""
    s3 = boto3.client("s3", region_name=REGION)
    test_images = []
    for i in range(30):
        raw = image(32 + i % 5, "PNG" if i % 3 else "JPEG", i)
        s3.put_object(Bucket=BUCKET, Key=f"data/test/c{i % 3}/{i}.img", Body=raw)
        test_images.append(raw)
    runs = tmp_path / "runs"
    output = runs / "watch" / "reports" / "output"
    output.mkdir(parents=True)
    with (output / "per_class_metrics.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["class", "precision", "recall", "f1", "support"])
        for name, (support, precision, recall) in CLASSES.items():
            writer.writerow([name, precision, recall, 0.0, support])
    bins = [{"low": i / 15, "high": (i + 1) / 15, "confidence": 0, "accuracy": 0, "count": float(c)} for i, c in enumerate(BIN_COUNTS)]
    (output / "metrics.json").write_text(json.dumps({"calibration": {"diagrams": {"test": {"before": bins, "after": bins}}}}))
    RunState(run_id="watch", channels={"test": f"s3://{BUCKET}/data/test"}).save(runs)
    sm = boto3.client("sagemaker", region_name=REGION)
    sm.create_model(ModelName="m", PrimaryContainer={"Image": "i"}, ExecutionRoleArn=ROLE)
    variant = {"VariantName": "AllTraffic", "ModelName": "m", "InstanceType": "ml.m5.xlarge", "InitialInstanceCount": 1}
    sm.create_endpoint_config(EndpointConfigName="c", ProductionVariants=[variant])
    sm.create_endpoint(EndpointName="prod", EndpointConfigName="c")
    cfg = load_config(overrides={"region": REGION, "role_arn": ROLE, "bucket": BUCKET, "runs_dir": str(runs)}, environ={})
    return cfg, test_images


def record(raw: bytes, label: str, probability: float, as_json: bool) -> str:
    answer = json.dumps(
        {"predictions": [{"label": label, "probability": probability, "top_k": [{"label": label, "probability": probability}]}]}
    )
    if as_json:
        return seeding.capture_record(
            json.dumps({"instances": [{"b64": base64.b64encode(raw).decode()}]}).encode(), "application/json", answer
        )
    return seeding.capture_record(raw, "image/png", answer)


def capture(lines: list[str], hour: str) -> None:
    seeding.captured("prod", lines, hour)


def drawn_from_the_test_set(test_images: list[bytes], n: int) -> list[str]:
    rng = random.Random(7)
    # the counts the step derives from the per-class report: recall x support / precision
    weights = {name: round(recall * support / precision) for name, (support, precision, recall) in CLASSES.items()}
    labels = rng.choices(list(weights), weights=list(weights.values()), k=n)
    bins = rng.choices(range(15), weights=BIN_COUNTS, k=n)
    return [
        record(rng.choice(test_images), label, (b + rng.random()) / 15, as_json=i % 2 == 0)
        for i, (label, b) in enumerate(zip(labels, bins, strict=True))
    ]


def test_drift_is_quiet_on_test_like_traffic_and_flags_a_shifted_class_mix(aws, tmp_path, capsys):
    cfg, test_images = seed(tmp_path)
    capture(drawn_from_the_test_set(test_images, 300), "07")
    ctx = pipeline.context(cfg, run_id="watch", endpoint_name="prod")
    pipeline.run(["drift"], ctx)
    out = capsys.readouterr().out
    assert "event=drift endpoint=prod predictions=300 unreadable=0" in out and "drifted=none" in out, out
    assert "class_tvd=0.0" in out  # measured 0.016 (confidence 0.063, format 0.040): far under 0.25
    page = tmp_path / "runs" / "watch" / "reports" / "drift-prod.html"
    assert "no drift above the threshold" in page.read_text()

    # newer traffic: every image called a cat, with high confidence
    capture([record(test_images[i % 30], "cat", 0.99, as_json=False) for i in range(300)], "08")
    with pytest.raises(DriftFound, match="class"):
        pipeline.run(["drift"], pipeline.context(cfg, run_id="watch", endpoint_name="prod"))
    assert "drift: class, confidence" in page.read_text()
    account = ["--region", REGION, "--role-arn", ROLE, "--bucket", BUCKET, "--runs-dir", str(tmp_path / "runs")]
    code = pipeline.main(["drift", "--endpoint", "prod", "--run-id", "watch", *account])
    assert code == 3


def test_an_unreadable_record_is_counted_and_a_small_sample_never_flags(aws, tmp_path, capsys):
    cfg, test_images = seed(tmp_path)
    broken = json.dumps(
        {"captureData": {"endpointInput": {"observedContentType": "image/png", "data": "bm90IGFuIGltYWdl", "encoding": "BASE64"}}}
    )
    capture([broken] + [record(test_images[0], "cat", 0.99, as_json=False) for _ in range(5)], "07")
    pipeline.run(["drift"], pipeline.context(cfg, run_id="watch", endpoint_name="prod"))
    out = capsys.readouterr().out
    assert "predictions=5 unreadable=1" in out and "drifted=none" in out and "note=fewer_than_30_predictions" in out
