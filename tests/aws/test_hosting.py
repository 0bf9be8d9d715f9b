"""The hosting options after real-time against the emulator: async, serverless, autoscaling, and their teardown.

The emulator (moto 5.2.5) keeps async and serverless endpoint configs, answers InvokeEndpointAsync with
an output (or failure) object it writes to S3 itself (queued through
``/moto-api/static/sagemaker/async-endpoint-results``; in a bucket of its own, not the endpoint's
output path), registers scalable targets and scaling policies and keeps CloudWatch alarms with their
tags. It keeps no tags of scalable targets and lacks ListTagsForResource there: the gate answers it
(tests/aws/gate.py). Every request goes through the pipeline's own guard (the service model's
max/pattern/enum, Application Auto Scaling's and CloudWatch's too), and is checked again here.
"""

from __future__ import annotations

import json

import boto3
import pytest

from deploy import hosting_options, pipeline, service_model
from deploy.config import ConfigError, load_config
from deploy.context import StepError
from deploy.rules import RequestRules
from deploy.state import RunState
from deploy.steps import hosting
from image_classifier import params
from tests.aws.conftest import BUCKET, REGION, ROLE
from tests.aws.gate import Gate

MODEL_DATA = f"s3://{BUCKET}/seed/model.tar.gz"
ANSWER = {
    "predictions": [
        {
            "label": "cat",
            "probability": 0.81,
            "top_k": [{"label": "cat", "index": 0, "probability": 0.81}, {"label": "dog", "index": 1, "probability": 0.19}],
        }
    ]
}
ALL_TRAFFIC = "endpoint/{}/variant/AllTraffic"


@pytest.fixture
def sample(tmp_path):
    path = tmp_path / "cat.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n the emulator never decodes it")
    return path


def _context(tmp_path, run_id: str, *, sample=None, keep_endpoint=False, **overrides):
    cfg = load_config(
        overrides={
            "region": REGION,
            "role_arn": ROLE,
            "bucket": BUCKET,
            "runs_dir": str(tmp_path / "runs"),
            "stream_logs": False,
            "teardown_poll_s": 0.2,
            **overrides,
        },
        environ={},
    )
    RunState(run_id=run_id, final_model_data=MODEL_DATA).save(cfg.runs_dir)
    return pipeline.context(cfg, run_id=run_id, yes=True, keep_endpoint=keep_endpoint, sample=sample)


def _clients():
    return (
        boto3.client("sagemaker", region_name=REGION),
        boto3.client("application-autoscaling", region_name=REGION),
        boto3.client("cloudwatch", region_name=REGION),
    )


def _scaling(autoscaling, cloudwatch) -> tuple[list[str], list[str], list[str]]:
    """Scalable targets, scaling policies and ic-* alarms left in the emulator."""
    targets = [t["ResourceId"] for t in autoscaling.describe_scalable_targets(ServiceNamespace="sagemaker")["ScalableTargets"]]
    policies = [p["PolicyName"] for p in autoscaling.describe_scaling_policies(ServiceNamespace="sagemaker")["ScalingPolicies"]]
    alarms = [a["AlarmName"] for a in cloudwatch.describe_alarms(AlarmNamePrefix="ic-")["MetricAlarms"]]
    return targets, policies, alarms


def _valid(gate: Gate, service: str, *operations: str) -> None:
    for operation in operations:
        bodies = gate.calls(operation)
        assert bodies, operation
        for body in bodies:
            assert service_model.violations((service, operation), body) == [], (operation, body)


def test_async_endpoint_is_invoked_through_s3_scales_to_zero_and_cleanup_removes_it(gate, aws, tmp_path, sample, capsys):
    aws.post("/moto-api/static/sagemaker/async-endpoint-results", json.dumps({"results": [{"data": json.dumps(ANSWER)}]}).encode())
    async_options = {"max_concurrent_invocations": 2, "max_instances": 3, "backlog_per_instance": 4.0}
    ctx = _context(tmp_path, "async1", sample=sample, keep_endpoint=True, async_inference=async_options, tags={"team": "vision"})
    pipeline.run(["async"], ctx)
    name = "ic-async-async1-1"
    sm, autoscaling, cloudwatch = _clients()

    # the endpoint: S3 output and failure paths, concurrency per instance; the container told its limits
    config = aws.sent("CreateEndpointConfig")[-1]
    assert config["EndpointConfigName"] == name
    output = f"s3://{BUCKET}/image-classifier/runs/async1/async/{name}/output"
    assert config["AsyncInferenceConfig"] == {
        "OutputConfig": {"S3OutputPath": output, "S3FailurePath": output + "-failures"},
        "ClientConfig": {"MaxConcurrentInvocationsPerInstance": 2},
    }
    assert config["ProductionVariants"][0]["InstanceType"] == "ml.m5.xlarge"
    environment = aws.sent("CreateModel")[-1]["PrimaryContainer"]["Environment"]
    assert environment == {params.MAX_PAYLOAD_ENV: str(params.MAX_PAYLOAD_CEILING_MB), params.TIMEOUT_ENV: "900"}

    # the query: the sample uploaded to S3, the endpoint invoked with its location, the answer read back
    invoke = [r for r in aws.requests() if r["path"].endswith("/async-invocations")][-1]
    location = invoke["headers"]["x-amzn-sagemaker-inputlocation"]
    bucket, _, key = location.removeprefix("s3://").partition("/")
    assert bucket == BUCKET and key.startswith("image-classifier/runs/async1/async-input/")
    assert boto3.client("s3").get_object(Bucket=bucket, Key=key)["Body"].read() == sample.read_bytes()
    assert invoke["headers"]["x-amzn-sagemaker-custom-attributes"] == "top_k=5"
    assert invoke["headers"]["x-amzn-sagemaker-invocationtimeoutseconds"] == "900"
    out = capsys.readouterr().out
    assert "event=prediction endpoint=ic-async-async1-1 kind=async" in out and "  0.810  cat" in out and "  0.190  dog" in out

    # scale to zero and back: backlog per instance tracked, a step policy fired by an alarm from zero
    (target,) = autoscaling.describe_scalable_targets(ServiceNamespace="sagemaker")["ScalableTargets"]
    assert (target["ResourceId"], target["MinCapacity"], target["MaxCapacity"]) == (ALL_TRAFFIC.format(name), 0, 3)
    policies = {p["PolicyName"]: p for p in autoscaling.describe_scaling_policies(ServiceNamespace="sagemaker")["ScalingPolicies"]}
    backlog = policies[f"{name}-backlog"]["TargetTrackingScalingPolicyConfiguration"]
    assert backlog["TargetValue"] == 4.0
    assert backlog["CustomizedMetricSpecification"]["MetricName"] == "ApproximateBacklogSizePerInstance"
    assert backlog["CustomizedMetricSpecification"]["Dimensions"] == [{"Name": "EndpointName", "Value": name}]
    step = policies[f"{name}-from-zero"]
    assert step["StepScalingPolicyConfiguration"]["StepAdjustments"] == [{"MetricIntervalLowerBound": 0.0, "ScalingAdjustment": 1}]
    (alarm,) = cloudwatch.describe_alarms(AlarmNames=[f"{name}-backlog-without-capacity"])["MetricAlarms"]
    assert (alarm["MetricName"], alarm["Namespace"], alarm["AlarmActions"]) == (
        "HasBacklogWithoutCapacity",
        "AWS/SageMaker",
        [step["PolicyARN"]],
    )
    assert alarm["Dimensions"] == [{"Name": "EndpointName", "Value": name}]

    # tagged, in state.json, every request valid against its service model
    run_tags = {"project": "image-classifier", "run-id": "async1", "team": "vision"}
    assert gate.target_tags[ALL_TRAFFIC.format(name)] == run_tags
    assert {t["Key"]: t["Value"] for t in cloudwatch.list_tags_for_resource(ResourceARN=alarm["AlarmArn"])["Tags"]} == run_tags
    state = json.loads((ctx.run_dir / "state.json").read_text())
    assert state["async_endpoint"] == name and state["results"]["async"]["answer"] == ANSWER
    assert {(r["kind"], r["name"]) for r in state["resources"]} >= {
        ("scalable-target", ALL_TRAFFIC.format(name)),
        ("alarm", f"{name}-backlog-without-capacity"),
        ("endpoint", name),
    }
    _valid(gate, "application-autoscaling", "RegisterScalableTarget", "PutScalingPolicy")
    _valid(gate, "sagemaker", "CreateEndpointConfig", "CreateModel", "CreateEndpoint")

    # cleanup, by tag: the run's alarm, target, policies, endpoint go; a stranger's stay
    autoscaling.register_scalable_target(
        ServiceNamespace="sagemaker",
        ResourceId=ALL_TRAFFIC.format("theirs"),
        ScalableDimension="sagemaker:variant:DesiredInstanceCount",
        MinCapacity=1,
        MaxCapacity=2,
    )
    cloudwatch.put_metric_alarm(
        AlarmName="ic-theirs", MetricName="CPUUtilization", Namespace="AWS/SageMaker", Statistic="Average", Period=60, EvaluationPeriods=1, Threshold=1.0,
        ComparisonOperator="GreaterThanThreshold", Tags=[{"Key": "project", "Value": "someone-else"}],
    )  # fmt: skip
    pipeline.run(["cleanup"], ctx)
    assert _scaling(autoscaling, cloudwatch) == ([ALL_TRAFFIC.format("theirs")], [], ["ic-theirs"])
    assert name not in [e["EndpointName"] for e in sm.list_endpoints()["Endpoints"]]
    assert "kind=scalable-target" in capsys.readouterr().out


def test_a_failed_async_request_fails_the_step_and_leaves_nothing(gate, aws, tmp_path, sample, capsys):
    failure = {"results": [{"is_failure": True, "data": '{"error": "image could not be decoded"}'}]}
    aws.post("/moto-api/static/sagemaker/async-endpoint-results", json.dumps(failure).encode())
    ctx = _context(tmp_path, "async2", sample=sample)
    with pytest.raises(StepError, match="could not be decoded"):
        pipeline.run(["async"], ctx)
    sm, autoscaling, cloudwatch = _clients()
    assert _scaling(autoscaling, cloudwatch) == ([], [], [])
    assert [e["EndpointName"] for e in sm.list_endpoints()["Endpoints"]] == []
    out = capsys.readouterr().out
    assert "event=teardown kind=alarm name=ic-async-async2-1-backlog-without-capacity action=deleted" in out
    assert f"event=teardown kind=scalable-target name={ALL_TRAFFIC.format('ic-async-async2-1')} action=deleted" in out
    assert ctx.state.async_endpoint is None


def test_the_wait_for_an_endpoint_says_how_long_and_a_failure_says_why(gate, aws, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(hosting, "ENDPOINT_POLL_SECONDS", 0.01)
    monkeypatch.setattr(hosting, "ENDPOINT_WAIT_SECONDS", 0.1)
    gate.hold("endpoint", r"^ic-endpoint-slow-", "Creating")
    with pytest.raises(StepError, match=r"endpoint ic-endpoint-slow-1 did not come into service: still Creating after 0 s"):
        pipeline.run(["deploy"], _context(tmp_path, "slow"))
    assert "event=endpoint_waiting endpoint=ic-endpoint-slow-1 status=Creating waited_s=0" in capsys.readouterr().out
    gate.hold("endpoint", r"^ic-endpoint-broken-", "Failed", FailureReason="The primary container failed the ping health check.")
    with pytest.raises(StepError, match=r"ic-endpoint-broken-1 did not come into service: The primary container failed the ping"):
        pipeline.run(["deploy"], _context(tmp_path, "broken"))


def test_real_time_autoscaling_is_registered_then_removed_with_the_endpoint(gate, aws, tmp_path, capsys):
    pipeline.run(["deploy"], _context(tmp_path, "fixed"))  # the default: one instance, nothing to scale
    assert gate.calls("RegisterScalableTarget") == []
    scaling = {"min_instances": 1, "max_instances": 3, "invocations_per_instance": 150.0}
    ctx = _context(tmp_path, "scaled", autoscaling=scaling)
    pipeline.run(["deploy"], ctx)
    (registered,) = gate.calls("RegisterScalableTarget")
    endpoint = "ic-endpoint-scaled-1"
    assert (registered["ResourceId"], registered["MinCapacity"], registered["MaxCapacity"]) == (ALL_TRAFFIC.format(endpoint), 1, 3)
    assert registered["Tags"] == {"project": "image-classifier", "run-id": "scaled"}
    (policy,) = gate.calls("PutScalingPolicy")
    tracking = policy["TargetTrackingScalingPolicyConfiguration"]
    assert tracking["PredefinedMetricSpecification"] == {"PredefinedMetricType": "SageMakerVariantInvocationsPerInstance"}
    assert (policy["PolicyType"], tracking["TargetValue"]) == ("TargetTrackingScaling", 150.0)
    _valid(gate, "application-autoscaling", "RegisterScalableTarget", "PutScalingPolicy")
    out = capsys.readouterr().out  # the end of the run: the target and its policy go before the endpoint
    assert out.index(f"kind=scalable-target name={ALL_TRAFFIC.format(endpoint)} action=deleted") < out.index(
        f"kind=endpoint name={endpoint}"
    )
    _, autoscaling, cloudwatch = _clients()
    assert _scaling(autoscaling, cloudwatch) == ([], [], [])


def test_serverless_endpoint_is_created_and_queried(aws, tmp_path, sample, capsys):
    aws.queue_endpoint_results([json.dumps(ANSWER)])
    ctx = _context(tmp_path, "sls", sample=sample, serverless={"memory_mb": 2048, "max_concurrency": 3})
    pipeline.run(["serverless"], ctx)
    config = aws.sent("CreateEndpointConfig")[-1]
    (variant,) = config["ProductionVariants"]
    assert variant["ServerlessConfig"] == {"MemorySizeInMB": 2048, "MaxConcurrency": 3}
    assert not {"InstanceType", "InitialInstanceCount", "InferenceAmiVersion"} & set(variant)
    model = aws.sent("CreateModel")[-1]
    assert model["PrimaryContainer"]["Environment"] == {params.MAX_PAYLOAD_ENV: "4", params.TIMEOUT_ENV: "60"}
    assert not model.get("EnableNetworkIsolation") and "VpcConfig" not in model
    out = capsys.readouterr().out
    assert "event=prediction endpoint=ic-serverless-sls-1 kind=serverless" in out and "  0.810  cat" in out
    assert ctx.state.results["serverless"]["answer"] == ANSWER
    assert boto3.client("sagemaker", region_name=REGION).list_endpoints()["Endpoints"] == []  # deleted at the end of the run


@pytest.mark.parametrize(
    ("overrides", "refused"),
    [
        ({}, None),  # network isolation on: the serverless model alone goes without (deploy.sdk.model)
        ({"network_isolation": False}, None),
        ({"network_isolation": False, "serverless": {"memory_mb": 8192}}, "serverless.memory_mb: 8192"),
        ({"network_isolation": False, "serverless": {"memory_mb": 1536}}, "serverless.memory_mb: 1536"),
        ({"network_isolation": False, "serverless": {"max_payload_mb": 5}}, "serverless.max_payload_mb: 5 MB"),
        ({"network_isolation": False, "serverless": {"timeout_s": 61}}, "serverless.timeout_s: 61 s"),
        (
            {"network_isolation": False, "subnets": ["subnet-0123456789abcdef0"], "security_group_ids": ["sg-0123456789abcdef0"]},
            "subnets: serverless endpoints run outside your VPC",
        ),
    ],
)
def test_the_configuration_check_refuses_what_serverless_cannot_do(overrides, refused, tmp_path):
    cfg = load_config(overrides={"region": REGION, "role_arn": ROLE, "bucket": BUCKET, **overrides}, environ={})
    if refused is None:
        pipeline.check_plan(cfg, ["serverless"])
        return
    with pytest.raises(ConfigError, match=refused.replace(".", r"\.")):
        pipeline.check_plan(cfg, ["serverless"])
    pipeline.check_plan(cfg, ["deploy"])  # only the serverless step is refused


def test_serverless_gpu_multi_model_and_large_images_are_refused_on_the_request():
    rules = RequestRules()
    rules.refusals("sagemaker", "CreateModel", {"ModelName": "mm", "PrimaryContainer": {"Mode": "MultiModel"}})
    rules.refusals("sagemaker", "CreateModel", {"ModelName": "iso", "EnableNetworkIsolation": True})
    serverless = {"MemorySizeInMB": 2048, "MaxConcurrency": 1}
    for model, extra, expected in (
        ("m", {"InstanceType": "ml.g5.xlarge"}, "runs on CPU only"),
        ("m", {"AcceleratorType": "ml.eia2.medium"}, "runs on CPU only"),
        ("mm", {}, "multi-model"),
        ("iso", {}, "network isolation"),
    ):
        variant = {"VariantName": "v", "ModelName": model, "ServerlessConfig": serverless, **extra}
        problems = rules.refusals("sagemaker", "CreateEndpointConfig", {"EndpointConfigName": "c", "ProductionVariants": [variant]})
        assert any(expected in p for p in problems), problems
    ok = {"VariantName": "v", "ModelName": "m", "ServerlessConfig": serverless}
    assert rules.refusals("sagemaker", "CreateEndpointConfig", {"EndpointConfigName": "c2", "ProductionVariants": [ok]}) == []
    assert "10 GB" in hosting_options.serverless_image_problem("repo@sha256:x", 11 * 1024**3)
    assert hosting_options.serverless_image_problem("repo@sha256:x", 7 * 1024**3) is None


@pytest.mark.parametrize(
    ("overrides", "refused"),
    [
        ({"async_inference": {"max_payload_mb": params.MAX_PAYLOAD_CEILING_MB + 1}}, "measured ceiling"),
        ({"async_inference": {"max_payload_mb": 2048}}, "SageMaker's 1 GB"),
        ({"async_inference": {"timeout_s": 3601}}, "at most 3600 s"),
    ],
)
def test_the_configuration_check_refuses_what_async_cannot_do(overrides, refused):
    cfg = load_config(overrides={"region": REGION, "role_arn": ROLE, "bucket": BUCKET, **overrides}, environ={})
    with pytest.raises(ConfigError, match=refused):
        pipeline.check_plan(cfg, ["async"])


def test_scaling_bounds_and_topics_are_checked_when_the_configuration_loads():
    base = {"region": REGION, "role_arn": ROLE, "bucket": BUCKET}
    for overrides, field in (
        ({"autoscaling": {"min_instances": 3, "max_instances": 2}}, "autoscaling.min_instances"),
        ({"async_inference": {"min_instances": 4}}, "async_inference.min_instances"),
        ({"async_inference": {"success_topic": "my-topic"}}, "async_inference.success_topic"),
        ({"async_inference": {"instance_type": "ml.p3.2xlarge"}}, "async_inference.instance_type"),
        ({"serverless": {"instance_type": "ml.g5.xlarge"}}, "serverless: instance_type: a serverless endpoint has no instances"),  # no GPU
    ):
        with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
            load_config(overrides={**base, **overrides}, environ={})


def test_the_dry_run_of_async_serverless_and_autoscaling_sends_only_valid_requests(aws, tmp_path):
    cfg = load_config(
        overrides={
            "region": REGION,
            "role_arn": ROLE,
            "bucket": BUCKET,
            "runs_dir": str(tmp_path),
            "network_isolation": False,
            "autoscaling": {"max_instances": 2},
            "async_inference": {"instance_type": "ml.g5.xlarge", "success_topic": "arn:aws:sns:us-east-1:123456789012:done"},
        },
        environ={},
    )
    ctx = pipeline.context(cfg, dry_run=True)
    pipeline.run(["deploy", "async", "serverless"], ctx)
    rules, by = RequestRules(), {}
    for call in ctx.aws.dry_run.calls:
        assert service_model.violations((call["service"], call["operation"]), call["request"]) == [], call
        assert rules.refusals(call["service"], call["operation"], call["request"]) == [], call
        rules.record(call["service"], call["operation"], call["request"])
        by.setdefault(call["operation"], []).append(call["request"])
    assert len(by["RegisterScalableTarget"]) == 2 and len(by["PutScalingPolicy"]) == 3 and len(by["PutMetricAlarm"]) == 1
    configs = {c["EndpointConfigName"].split("-")[1]: c for c in by["CreateEndpointConfig"]}
    assert configs["async"]["ProductionVariants"][0]["InferenceAmiVersion"] == "al2023-ami-sagemaker-inference-gpu-4-1"  # a GPU async host
    assert configs["async"]["AsyncInferenceConfig"]["OutputConfig"]["NotificationConfig"] == {
        "SuccessTopic": "arn:aws:sns:us-east-1:123456789012:done"
    }
    assert "ServerlessConfig" in configs["serverless"]["ProductionVariants"][0]
    assert aws.requests() == []  # nothing sent
