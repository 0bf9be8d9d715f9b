"""The pipeline's command line: dry run, configuration errors, the --yes guard. Nothing may reach AWS."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.aws.conftest import BUCKET, REGION, ROLE
from tests.helpers import REPO_ROOT

GOOD = ["--region", REGION, "--role-arn", ROLE, "--bucket", BUCKET]


def _pipeline(*args: str, tmp_path, env_extra: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    import os

    env = {**os.environ, "IC_RUNS_DIR": str(tmp_path / "runs"), **(env_extra or {})}
    return subprocess.run(
        [sys.executable, "-m", "deploy.pipeline", *args], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300
    )


def test_dry_run_prints_every_create_request_and_sends_nothing(aws, tmp_path):
    result = _pipeline("tune", "train", "deploy", "mme", "transform", "clarify", "--dry-run", *GOOD, tmp_path=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    calls = json.loads(result.stdout)
    operations = [c["operation"] for c in calls]
    assert operations == [
        "CreateHyperParameterTuningJob",
        "CreateTrainingJob",
        "CreateModel",
        "CreateEndpointConfig",
        "CreateEndpoint",
        "CreateModel",
        "CreateEndpointConfig",
        "CreateEndpoint",
        "CreateTransformJob",
        "PutObject",  # Clarify's analysis config
        "CreateProcessingJob",
    ]
    training = next(c["request"] for c in calls if c["operation"] == "CreateTrainingJob")
    assert training["EnableNetworkIsolation"] is True and training["EnableManagedSpotTraining"] is True
    assert all(t in training["Tags"] for t in ({"Key": "project", "Value": "image-classifier"}, {"Key": "run-id", "Value": "dry-run"}))
    assert aws.requests() == [], "a dry run sent requests"


@pytest.mark.parametrize(
    ("args", "env", "field"),
    [
        (["--region", REGION, "--bucket", BUCKET], {}, "role_arn: Field required"),
        ([*GOOD[:1], "us-east-9", *GOOD[2:]], {}, "region: 'us-east-9' is not a SageMaker region"),
        ([*GOOD, "--train-instance-type", "g5.2xlarge"], {}, "train_instance_type: 'g5.2xlarge' is not a SageMaker instance type"),
        (GOOD, {"IC_ENDPOINT_INSTANCE_TYPE": "ml.m5"}, "endpoint_instance_type: 'ml.m5' is not a SageMaker instance type"),
        ([*GOOD, "--set", 'subnets=["subnet-0123456789abcdef0"]'], {}, "subnets and security_group_ids go together"),
        ([*GOOD, "--set", "search.lr_scale=[3, 0.3]"], {}, "search.lr_scale: need 0 < low < high"),
        ([*GOOD, "--set", "search.lr=[0.0001, 0.01]"], {}, "lr: the tuning job now searches lr_scale, a factor on the learning rate"),
    ],
)
def test_bad_configuration_fails_before_any_request(aws, tmp_path, args, env, field):
    result = _pipeline("tune", *args, tmp_path=tmp_path, env_extra=env)
    assert result.returncode == 2
    assert "invalid deploy configuration" in result.stderr and field in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert aws.requests() == []


def test_billable_steps_need_yes(aws, tmp_path):
    result = _pipeline("deploy", *GOOD, tmp_path=tmp_path)
    assert result.returncode == 2
    assert "pass --yes" in result.stderr
    assert aws.requests() == []


def test_missing_earlier_step_is_named(aws, tmp_path):
    result = _pipeline("train", *GOOD, "--run-id", "fresh", tmp_path=tmp_path)
    assert result.returncode == 2
    assert "run the 'data' step first" in result.stderr
