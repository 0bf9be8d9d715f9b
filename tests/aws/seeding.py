"""Put into the emulator what it cannot produce, taken from the session's real `train` run.

The emulator completes jobs at once without running anything: its best trial is always
``FakeTrainingJobName`` with placeholder values, and jobs leave no artifacts in S3. These
helpers record the real best job and trials, and place the real model.tar.gz and
output.tar.gz where SageMaker would have written them, so the pipeline consumes real artifacts.
"""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import boto3

from tests.aws.conftest import BUCKET, REGION, ROLE

TUNED = {"lr_scale": "1.2", "batch_size": "64", "weight_decay": "0.0001", "freeze": "none", "model": "resnet18"}
TRIAL_LR_SCALES = ("0.4", "1.2", "2.5")


def tar(folder: Path) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                archive.add(path, arcname=str(path.relative_to(folder)))
    return buffer.getvalue()


def put(key: str, body: bytes) -> None:
    boto3.client("s3", region_name=REGION).put_object(Bucket=BUCKET, Key=key, Body=body)


def training_job(name: str, hyperparameters: dict[str, str], output: str) -> None:
    boto3.client("sagemaker", region_name=REGION).create_training_job(
        TrainingJobName=name,
        HyperParameters=hyperparameters,
        AlgorithmSpecification={"TrainingImage": "seed", "TrainingInputMode": "File"},
        RoleArn=ROLE,
        OutputDataConfig={"S3OutputPath": output},
        ResourceConfig={"InstanceType": "ml.g5.xlarge", "InstanceCount": 1, "VolumeSizeInGB": 10},
        StoppingCondition={"MaxRuntimeInSeconds": 3600},
    )


def tuning_results(tuning_job: str, static: dict[str, str], model_dir: Path) -> tuple[str, dict[str, str]]:
    """Three trials named as SageMaker names them, and the best job with the real model."""
    sm = boto3.client("sagemaker", region_name=REGION)
    hyperparameters = {**static, **TUNED, "_tuning_objective_metric": "best_valid_acc"}
    for i, scale in enumerate(TRIAL_LR_SCALES, 1):
        training_job(f"{tuning_job}-{i:03d}-0a1b2c3d", {**hyperparameters, "lr_scale": scale}, f"s3://{BUCKET}/seed")
    best = sm.describe_hyper_parameter_tuning_job(HyperParameterTuningJobName=tuning_job)["BestTrainingJob"]["TrainingJobName"]
    training_job(best, hyperparameters, f"s3://{BUCKET}/seed")
    put(f"seed/{best}/output/model.tar.gz", tar(model_dir))
    return best, hyperparameters


def final_job_outputs(job_root: str, model_dir: Path, output_dir: Path) -> None:
    """``job_root``: <output_path>/<job name> without the bucket."""
    put(f"{job_root}/output/model.tar.gz", tar(model_dir))
    put(f"{job_root}/output/output.tar.gz", tar(output_dir))
    # written by SageMaker's ProfilerReport rule job, which the emulator does not run: a stand-in
    put(f"{job_root}/rule-output/ProfilerReport-1/profiler-output/profiler-report.html", b"<html>stand-in for the rule job's report</html>")


class Answers:
    """What our server answers for an image: the package's own inference and encoder."""

    def __init__(self, model_dir: Path):
        from image_classifier.serving.model import LoadedModel

        self.model = LoadedModel(model_dir)

    def json(self, path: Path, *, top_k: int, lines: bool = False) -> str:
        from image_classifier.data.loading import load_rgb
        from image_classifier.serving.codec import ResponseOptions, encode_predictions

        probabilities = self.model.predict([load_rgb(path)])
        accept = "application/jsonlines" if lines else "application/json"
        body, _ = encode_predictions(probabilities, self.model.classes, ResponseOptions(accept, top_k, False))
        return body.decode()


def capture_record(request_body: bytes, content_type: str, answer: str) -> str:
    """One line of SageMaker's data capture (the emulator captures nothing): images base64, JSON as text."""
    import base64
    import json

    if content_type == "application/json":
        request = {"observedContentType": content_type, "mode": "INPUT", "data": request_body.decode(), "encoding": "JSON"}
    else:
        request = {
            "observedContentType": content_type,
            "mode": "INPUT",
            "data": base64.b64encode(request_body).decode(),
            "encoding": "BASE64",
        }
    output = {"observedContentType": "application/json", "mode": "OUTPUT", "data": answer, "encoding": "JSON"}
    return json.dumps({"captureData": {"endpointInput": request, "endpointOutput": output}, "eventMetadata": {"eventId": "e"}})


def captured(endpoint: str, lines: list[str], hour: str, prefix: str = "image-classifier") -> None:
    """Where capture writes: <destination>/<endpoint>/<variant>/yyyy/mm/dd/hh/<file>.jsonl."""
    put(f"{prefix}/capture/{endpoint}/{endpoint}/AllTraffic/2026/12/05/{hour}/00-00-000-{hour}.jsonl", "\n".join(lines).encode())
