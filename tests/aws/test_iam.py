"""The policies in deploy/iam/ grant every call the code can make, and nothing without a reason.

Calls: the boto3 calls written in deploy/ (read with ``ast``, ``tests/aws/iam_calls.py``), the
calls teardown builds from its kinds, and the calls observed while a dry run of every step and a
real ``check`` and ``cleanup`` run here (the SDK's included). Every aws-tier session also fails when
any call it observed lacks its action (``pytest_sessionfinish`` in tests/aws/conftest.py).
"""

from __future__ import annotations

import json
import re

import pytest

from deploy import permissions, pipeline, preflight
from deploy.aws import Aws
from deploy.config import load_config
from tests.aws import iam_calls, recorded
from tests.aws.conftest import BUCKET, REGION, ROLE

USER = iam_calls.IAM / "user-policy.json"
ROLE_POLICY = iam_calls.IAM / "execution-role-policy.json"
TRUST = iam_calls.IAM / "execution-role-trust.json"
PLACEHOLDERS = {"<REGION>", "<ACCOUNT_ID>", "<BUCKET>", "<PREFIX>", "<REPOSITORY>", "<ROLE_NAME>", "<GROUP>"}
# granted to the user without a call of ours: each with its reason
ALLOWED_WITHOUT_A_CALL = {
    "iam:PassRole": "every create request hands the execution role to SageMaker (only to sagemaker.amazonaws.com)",
    "sagemaker:AddTags": "a create request that carries tags needs it (every resource is tagged)",
    "sagemaker:CreateTrainingJob": "sent by the SDK (Estimator.fit), observed in the dry run below",
    "sagemaker:InvokeEndpoint": "sent by the SDK's Predictor (the query and serverless steps)",
    "ecr:TagResource": "CreateRepository with tags needs it",
    "ecr:BatchCheckLayerAvailability": "docker push (not boto3)",
    "ecr:InitiateLayerUpload": "docker push (not boto3)",
    "ecr:UploadLayerPart": "docker push (not boto3)",
    "ecr:CompleteLayerUpload": "docker push (not boto3)",
    "ecr:PutImage": "docker push (not boto3)",
    "application-autoscaling:TagResource": "RegisterScalableTarget with tags needs it",
    "iam:CreateServiceLinkedRole": "the first RegisterScalableTarget of an account creates Application Auto Scaling's role for SageMaker",
    "cloudwatch:TagResource": "PutMetricAlarm with tags needs it",
    "logs:DescribeLogStreams": "the SDK streams a job's log when stream_logs is on",
    "logs:GetLogEvents": "the SDK streams a job's log when stream_logs is on",
    "kms:CreateGrant": "SageMaker creates grants on the run's key for the caller's jobs and endpoints",
    "kms:Decrypt": "reading objects encrypted with the run's key (results, reports)",
    "kms:DescribeKey": "SageMaker checks the key given in a create request",
    "kms:GenerateDataKey": "uploading objects with the run's key",
}
# the execution role is used by SageMaker inside jobs and endpoints, never by our code: each statement's reason
EXECUTION_ROLE_STATEMENTS = {
    "ReadChannelsWriteArtifacts": "jobs read the channels and write model.tar.gz, checkpoints, reports, async answers",
    "ListChannels": "File and FastFile input modes list the channel prefixes",
    "PullTheImage": "SageMaker pulls the image by digest for every job and endpoint",
    "EcrLogin": "the pull needs an ECR token (no resource-level permission exists)",
    "ContainerLogs": "container output goes to CloudWatch Logs (/aws/sagemaker/...)",
    "Metrics": "jobs and endpoints publish their metrics",
    "ClarifyShadowEndpoint": "a Clarify job creates, calls and deletes a shadow endpoint of the model",
    "KmsForVolumesAndOutputs": "volumes and outputs encrypted with the run's key",
    "VpcWhenSubnetsAreSet": "with subnets, SageMaker attaches network interfaces in the VPC",
    "AsyncNotifications": "an async endpoint publishes to the success/error topics when set",
}


def _calls() -> set[tuple[str, str]]:
    return iam_calls.static_calls() | iam_calls.dispatched_calls()


def test_every_call_written_in_deploy_is_granted_to_the_user():
    calls = _calls()
    assert ("s3", "DeleteObjects") in calls and ("ecr", "PutLifecyclePolicy") in calls and ("sagemaker", "StopTrainingJob") in calls
    assert iam_calls.missing(calls, iam_calls.policy_actions(USER)) == []


def test_every_call_of_a_dry_run_of_every_step_is_granted(aws, tmp_path, digits_data, capfd):
    recorder = iam_calls.Recorder()
    uninstall = recorder.install()
    try:
        base = ["--region", REGION, "--role-arn", ROLE, "--bucket", BUCKET, "--set", f"runs_dir={tmp_path}"]
        every = ",".join(s.name for s in pipeline.STEPS if s.optional)
        assert pipeline.main(["all", "--with", every, "--dry-run", "--data", str(digits_data), *base]) == 0
        assert pipeline.main(["cleanup", "--all-runs", "--yes", *base]) == 0
    finally:
        uninstall()
    capfd.readouterr()
    assert {
        ("sagemaker", "CreateHyperParameterTuningJob"),
        ("sagemaker", "CreateEndpoint"),
        ("sagemaker", "ListEndpoints"),
    } <= recorder.seen
    assert iam_calls.missing(recorder.seen, iam_calls.policy_actions(USER)) == []


def test_every_action_granted_to_the_user_is_called_or_allowed_with_a_reason(observed_operations):
    called = {a for s, o in _calls() | observed_operations.seen for a in iam_calls.actions(s, o)}
    creates = {
        f"sagemaker:Create{n}" for n in ("HyperParameterTuningJob", "TransformJob", "ProcessingJob", "Model", "EndpointConfig", "Endpoint")
    }
    unexplained = iam_calls.policy_actions(USER) - called - creates - set(ALLOWED_WITHOUT_A_CALL)
    assert unexplained == set()
    assert not {a for a in ALLOWED_WITHOUT_A_CALL if a not in iam_calls.policy_actions(USER)}  # no stale reasons


def test_the_execution_role_is_trusted_by_sagemaker_and_every_statement_has_a_reason():
    trust = json.loads(TRUST.read_text())
    assert preflight._trusts_sagemaker(trust)
    statements = json.loads(ROLE_POLICY.read_text())["Statement"]
    assert {s["Sid"] for s in statements} == set(EXECUTION_ROLE_STATEMENTS)
    assert "*" not in iam_calls.policy_actions(ROLE_POLICY) and not any(a.endswith(":*") for a in iam_calls.policy_actions(ROLE_POLICY))


@pytest.mark.parametrize("path", [USER, ROLE_POLICY, TRUST], ids=lambda p: p.name)
def test_the_policies_are_least_privilege_and_name_only_known_placeholders(path):
    document = json.loads(path.read_text())
    assert document["Version"] == "2012-10-17"
    assert set(re.findall(r"<[A-Z_]+>", path.read_text())) <= PLACEHOLDERS
    for statement in document["Statement"]:
        actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
        assert not any(a == "*" or a.endswith(":*") for a in actions), statement
        resources = statement.get("Resource", [])
        if {"s3:GetObject", "s3:PutObject", "s3:DeleteObject"} & set(actions):
            assert all("<BUCKET>/<PREFIX>/" in r for r in ([resources] if isinstance(resources, str) else resources)), statement
        if any(a.startswith(("sagemaker:Create", "sagemaker:Delete", "sagemaker:Stop")) for a in actions):
            owned = statement.get("Condition", {}).get("StringEquals", {})  # promote/retire: the registry's endpoints only
            registry = ("model-package-group/<GROUP>", "model-package/<GROUP>/*")
            assert all(r.endswith(("/ic-*", "/sm-clarify-*", *registry)) for r in resources) or any(
                v == "model-registry:<GROUP>" for v in owned.values()
            ), statement


def _cfg(tmp_path):
    return load_config(overrides={"region": REGION, "role_arn": ROLE, "bucket": BUCKET, "runs_dir": str(tmp_path)}, environ={})


def test_check_names_the_permissions_the_caller_lacks(gate, tmp_path):
    gate.answer_query("SimulatePrincipalPolicy", recorded.simulated({"ecr:PutLifecyclePolicy", "sagemaker:CreateEndpoint"}))
    finding = preflight.allowed(Aws.connect(REGION), _cfg(tmp_path))
    assert finding.status == "problem"
    assert finding.detail.endswith("lacks ecr:PutLifecyclePolicy, sagemaker:CreateEndpoint")
    asked = gate.calls("SimulatePrincipalPolicy")
    assert len(asked) == len(json.loads(USER.read_text())["Statement"])  # one simulation per statement
    bucket_objects = next(a for a in asked if a.get("ActionNames.member.1") == ["s3:DeleteObject"])
    assert bucket_objects["ResourceArns.member.1"] == [f"arn:aws:s3:::{BUCKET}/image-classifier/run"]  # the run's prefix
    pass_role = next(a for a in asked if a.get("ActionNames.member.1") == ["iam:PassRole"])
    assert pass_role["ContextEntries.member.1.ContextKeyValues.member.1"] == ["sagemaker.amazonaws.com"]


def test_check_passes_a_caller_with_every_permission(gate, tmp_path):
    gate.answer_query("SimulatePrincipalPolicy", recorded.simulated(set()))
    assert preflight.allowed(Aws.connect(REGION), _cfg(tmp_path)).status == "ok"


def test_check_says_when_it_cannot_simulate(aws, tmp_path):
    """The emulator lacks SimulatePrincipalPolicy, as a caller without iam:SimulatePrincipalPolicy does."""
    finding = preflight.allowed(Aws.connect(REGION), _cfg(tmp_path))
    assert finding.status == "warning" and finding.detail.startswith("cannot simulate the policy of ")
    assert "deploy/iam/user-policy.json" in finding.fix


def test_an_assumed_role_is_simulated_as_its_role():
    session = "arn:aws:sts::123456789012:assumed-role/Deployer/alice"
    assert permissions.principal_arn(session) == "arn:aws:iam::123456789012:role/Deployer"
    assert permissions.principal_arn("arn:aws:iam::123456789012:user/alice") == "arn:aws:iam::123456789012:user/alice"
