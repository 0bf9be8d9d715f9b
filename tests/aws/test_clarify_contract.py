"""Clarify, for accounts that still have it: the analysis config reads our real answer correctly.

Clarify finds the class probabilities in the endpoint's answer with the analysis config's
JMESPath and names them with ``label_headers``. Here the config is the one the clarify step
uploads; the answer is the package's own inference and encoder on a real image, asked for
with the config's own accept type and custom attributes (what the shadow endpoint receives).
"""

from __future__ import annotations

import json

import boto3
import jmespath
import pytest

from deploy import pipeline
from deploy.config import load_config
from deploy.state import RunState
from tests.aws import seeding
from tests.aws.conftest import BUCKET, REGION, ROLE


def test_the_served_answer_satisfies_the_analysis_config(aws, digits_job, digits_data, tmp_path):
    from image_classifier.data.loading import load_rgb
    from image_classifier.serving.codec import encode_predictions, response_options
    from image_classifier.serving.model import LoadedModel

    model_dir = digits_job[0] / "model"
    seeding.put("seed/final/model.tar.gz", seeding.tar(model_dir))
    images = sorted((digits_data / "test" / "digit_4").glob("*.png"))[:2]
    for image in images:
        seeding.put(f"data/test/digit_4/{image.name}", image.read_bytes())
    key = boto3.client("kms", region_name=REGION).create_key()["KeyMetadata"]["Arn"]
    cfg = load_config(
        overrides={
            "region": REGION,
            "role_arn": ROLE,
            "bucket": BUCKET,
            "runs_dir": str(tmp_path),
            "kms_key_id": key,
            "clarify_max_runtime_s": 1800,
        },
        environ={},
    )
    channels = {c: f"s3://{BUCKET}/data/{c}/" for c in ("train", "validation", "test")}
    RunState(run_id="clarify", channels=channels, final_model_data=f"s3://{BUCKET}/seed/final/model.tar.gz").save(cfg.runs_dir)
    pipeline.run(["clarify"], pipeline.context(cfg, run_id="clarify", yes=True))

    sent = aws.sent("CreateProcessingJob")[-1]
    assert sent["StoppingCondition"] == {"MaxRuntimeInSeconds": 1800}
    assert sent["ProcessingOutputConfig"]["KmsKeyId"] == key and sent["ProcessingResources"]["ClusterConfig"]["VolumeKmsKeyId"] == key
    assert not sent.get("NetworkConfig", {}).get("EnableNetworkIsolation")
    config_uri = next(i["S3Input"]["S3Uri"] for i in sent["ProcessingInputs"] if i["InputName"] == "analysis_config")
    bucket, _, config_key = config_uri.removeprefix("s3://").partition("/")
    config_key = config_key if config_key.endswith(".json") else config_key.rstrip("/") + "/analysis_config.json"
    predictor = json.loads(boto3.client("s3").get_object(Bucket=bucket, Key=config_key)["Body"].read())["predictor"]

    card = json.loads((model_dir / "model_card.json").read_text())
    assert predictor["label_headers"] == card["classes"]
    model = LoadedModel(model_dir)
    options = response_options(predictor["accept_type"], predictor["custom_attributes"], len(model.classes))
    for image in images:
        body, _ = encode_predictions(model.predict([load_rgb(image)]), model.classes, options)
        scores = jmespath.search(predictor["probability"], json.loads(body))
        assert len(scores) == len(predictor["label_headers"]) == 10
        assert sum(scores) == pytest.approx(1.0, abs=1e-4)
        assert predictor["label_headers"][scores.index(max(scores))] == json.loads(body)["predictions"][0]["label"]
