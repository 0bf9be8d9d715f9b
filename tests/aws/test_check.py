"""The pre-flight of a new account (``python -m deploy.pipeline check``, the first step of ``all``).

STS, S3 and IAM are the emulator's own answers; Service Quotas, which it lacks, are recorded
answers played by the gate (``tests/aws/recorded.py``); Docker's platform is the answer of a
stand-in ``docker`` here and of the real engine in ``tests/aws/test_push.py``.
"""

from __future__ import annotations

import json
import os

import boto3
import pytest

from deploy import pipeline, preflight
from deploy.config import load_config
from tests.aws import recorded
from tests.aws.conftest import BUCKET, REGION, ROLE

GOOD = ["--region", REGION, "--role-arn", ROLE, "--bucket", BUCKET]
SPOT_G5 = "ml.g5.xlarge for spot training job usage"


@pytest.fixture
def docker_says(tmp_path, monkeypatch):
    """A ``docker`` whose ``version`` answers the given server platform (as the real client prints it)."""

    def say(platform: str) -> None:
        script = tmp_path / "docker"
        script.write_text(f"#!/bin/sh\necho {platform}\n")
        script.chmod(0o755)
        monkeypatch.setenv("DOCKER", str(script))

    return say


def _check(capsys, tmp_path, *args: str) -> tuple[int, list[str]]:
    code = pipeline.main(["check", *GOOD, "--runs-dir", str(tmp_path / "runs"), *args])
    out = capsys.readouterr()
    return code, [line for line in (out.out + out.err).splitlines() if line.startswith(("check=", "event=check", "error:"))]


def _line(lines: list[str], check: str, status: str) -> list[str]:
    return [line for line in lines if line.startswith(f"check={check} status={status} ")]


def test_a_ready_account_passes_every_check(gate, docker_says, tmp_path, capsys):
    for target, body in recorded.answers({SPOT_G5: 3.0}).items():
        gate.answer(target, body)
    gate.answer_query("SimulatePrincipalPolicy", recorded.simulated(set()))
    docker_says("linux/x86_64")
    code, lines = _check(capsys, tmp_path)
    assert code == 0, lines
    for check in ("credentials", "bucket", "role", "permissions", "docker"):
        assert len(_line(lines, check, "ok")) == 1, (check, lines)
    assert _line(lines, "quota", "ok") == [
        f"check=quota status=ok detail=\"'{SPOT_G5}' = 3 (needs 3)\"",  # 3 trials at once (max_parallel_jobs)
        "check=quota status=ok detail=\"'ml.m5.xlarge for endpoint usage' = 4 (needs 1)\"",  # a default value
    ]
    assert "event=check_done problems=0 warnings=0" in lines
    assert gate.calls("ListServiceQuotas") == [{"ServiceCode": "sagemaker"}]


def test_a_new_account_is_told_each_fix(gate, docker_says, tmp_path, capsys):
    boto3.client("s3", region_name="eu-west-1").create_bucket(
        Bucket="ic-eu-bucket", CreateBucketConfiguration={"LocationConstraint": "eu-west-1"}
    )
    trust_ec2 = {
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"}, "Action": "sts:AssumeRole"}],
    }
    boto3.client("iam").create_role(RoleName="Ec2Role", AssumeRolePolicyDocument=json.dumps(trust_ec2))
    for target, body in recorded.answers({}).items():
        gate.answer(target, body)
    docker_says("linux/arm64")
    code, lines = _check(capsys, tmp_path, "--bucket", "ic-eu-bucket", "--role-arn", "arn:aws:iam::123456789012:role/Ec2Role")
    assert code == 2
    (bucket,) = _line(lines, "bucket", "problem")
    assert "ic-eu-bucket is in eu-west-1" in bucket and "fix=\"set region = 'eu-west-1', or use a bucket in us-east-1" in bucket
    (role,) = _line(lines, "role", "problem")
    assert "does not let sagemaker.amazonaws.com assume it" in role and "aws iam update-assume-role-policy --role-name Ec2Role" in role
    (quota,) = _line(lines, "quota", "problem")
    assert f"'{SPOT_G5}' is 0 in us-east-1; the run holds 3 at once" in quota
    assert f"--quota-code {recorded.CODES[SPOT_G5]} --desired-value 3 --region us-east-1" in quota
    (docker,) = _line(lines, "docker", "warning")
    assert "Docker runs linux/arm64" in docker and "binfmt" in docker
    (permissions,) = _line(lines, "permissions", "warning")  # the emulator cannot simulate: said, not guessed
    assert "cannot simulate the policy of arn:aws:sts::123456789012:user/moto" in permissions
    assert "event=check_done problems=3 warnings=2" in lines
    assert any("the pre-flight found 3 problem(s)" in line for line in lines)


def test_all_stops_at_the_check_before_anything_is_created(aws, gate, docker_says, tmp_path, capsys):
    for target, body in recorded.answers({}).items():  # a new account: Spot GPU quota at 0
        gate.answer(target, body)
    docker_says("linux/amd64")
    code = pipeline.main(["all", *GOOD, "--runs-dir", str(tmp_path / "runs")])
    err = capsys.readouterr().err
    assert code == 2 and "the pre-flight found 1 problem(s)" in err, err[-2000:]
    assert not any(op.startswith("Create") for op, _ in gate.log)
    assert [r["method"] for r in aws.requests() if r["method"] == "PUT"] == []  # nothing uploaded either


def test_what_cannot_be_read_is_a_warning_that_says_where_to_look(gate, docker_says, tmp_path, capsys):
    """No recorded answers: the emulator has no ListServiceQuotas; a role in another account cannot be read from here."""
    docker_says("linux/amd64")
    code, lines = _check(capsys, tmp_path, "--role-arn", "arn:aws:iam::210987654321:role/Elsewhere")
    assert code == 0, lines
    (quotas,) = _line(lines, "quotas", "warning")
    assert "Service Quotas did not answer" in quotas and SPOT_G5 in quotas and "ml.m5.xlarge for endpoint usage" in quotas
    (role,) = _line(lines, "role", "warning")
    assert "belongs to account 210987654321" in role


def test_a_missing_bucket_and_role_and_no_credentials(gate, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("DOCKER", "/nonexistent/docker")
    code, lines = _check(capsys, tmp_path, "--bucket", "ic-no-such-bucket", "--role-arn", "arn:aws:iam::123456789012:role/Nobody")
    assert code == 2
    assert "aws s3 mb s3://ic-no-such-bucket --region us-east-1" in _line(lines, "bucket", "problem")[0]
    assert "role Nobody does not exist in account 123456789012" in _line(lines, "role", "problem")[0]
    assert "not found: needed only to build and push" in _line(lines, "docker", "warning")[0]

    for key in [k for k in os.environ if k.startswith("AWS_") and k not in ("AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION", "AWS_REGION")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    code, lines = _check(capsys, tmp_path)
    assert code == 2
    assert (
        lines[0]
        == "check=credentials status=problem detail='no AWS credentials found' fix='aws configure (or AWS_PROFILE=<profile>, or aws sso login)'"
    )


def test_quota_needs_follow_the_plan():
    cfg = load_config(overrides={"region": REGION, "role_arn": ROLE, "bucket": BUCKET, "max_parallel_jobs": 4}, environ={})
    assert preflight.quota_needs(cfg, ["check", "tune", "train", "deploy"]) == {SPOT_G5: 4, "ml.m5.xlarge for endpoint usage": 1}
    on_demand = cfg.model_copy(update={"use_spot": False, "train_instance_count": 2})
    assert preflight.quota_needs(on_demand, ["train"]) == {"ml.g5.xlarge for training job usage": 2}
    everything = preflight.quota_needs(cfg, ["deploy", "mme", "transform", "clarify"])
    assert everything == {
        "ml.m5.xlarge for endpoint usage": 3,  # the endpoint, the multi-model one and Clarify's shadow endpoint at once
        "ml.m5.xlarge for transform job usage": 1,
        "ml.m5.xlarge for processing job usage": 1,
    }


def test_quota_needs_count_every_step_of_the_run():
    cfg = load_config(
        overrides={
            "region": REGION,
            "role_arn": ROLE,
            "bucket": BUCKET,
            "serverless": {"max_concurrency": 7},
            "async_inference": {"max_instances": 3},
        },
        environ={},
    )
    needs = preflight.quota_needs(cfg, ["deploy", "transform", "explain", "async", "serverless"])
    assert needs == {
        "ml.m5.xlarge for endpoint usage": 1 + 3,  # the real-time endpoint and the async one at its most
        "ml.m5.xlarge for transform job usage": 1,  # transform and explain run one after the other
        preflight.SERVERLESS_CONCURRENCY: 7,
    }
    assert preflight.quota_needs(cfg, ["explain"]) == {"ml.m5.xlarge for transform job usage": 1}
