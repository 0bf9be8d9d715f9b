"""Day two against the emulator through the gate: register, approve, promote (create, then blue/green), roll back,
Ctrl-C during a rollout, cleanup and retire.

moto 5.2.5 keeps model package groups and packages; it lacks UpdateEndpoint and every deployment state,
which the gate plays (tests/aws/rollouts.py): Updating for a few looks, then InService on the new
configuration, or RollingBack to the old one when an alarm of the update is in ALARM. Every request
passes the pipeline's guard (service model and deploy.rules, deploy.rollout_rules included).
"""

from __future__ import annotations

import json

import boto3
import pytest

from deploy import ecr, pipeline, service_model
from deploy.config import load_config
from deploy.context import StepError
from deploy.rules import RequestRefused
from deploy.state import RunState
from image_classifier import params
from tests.aws import recorded, seeding
from tests.aws.conftest import BUCKET, REGION, ROLE, pinned_image, push_image
from tests.aws.gate import Gate

ENDPOINT = "prod"
KEY = "arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"


def card(accuracy: float) -> dict:
    return {
        "architecture": "resnet18",
        "num_classes": 2,
        "classes": ["cat", "dog"],
        "metrics": {"test_acc": accuracy, "test_loss": 0.31, "best_valid_acc": 0.9},
        "calibration": {"test": {"nll_before": 0.4, "nll_after": 0.3, "ece_before": 0.08, "ece_after": 0.021}},
        "temperature": 1.4,
        "weights_sha256": "ab" * 32,
    }


def seed_run(tmp_path, run_id: str, accuracy: float, **overrides):
    """A finished run: its final job and model artifact (with a model card) in S3, its image pushed."""
    folder = tmp_path / f"model-{run_id}"
    folder.mkdir()
    (folder / params.MODEL_CARD_FILE).write_text(json.dumps(card(accuracy)))
    key = f"image-classifier/runs/{run_id}/final/ic-final-{run_id}-1/output/model.tar.gz"
    seeding.put(key, seeding.tar(folder))
    cfg = load_config(
        overrides={
            "region": REGION,
            "role_arn": ROLE,
            "bucket": BUCKET,
            "runs_dir": str(tmp_path / "runs"),
            "stream_logs": False,
            "teardown_poll_s": 0.1,
            "kms_key_id": KEY,
            "rollout": {"poll_s": 0.01, "bake_s": 300},
            **overrides,
        },
        environ={},
    )
    image = pinned_image(push_image(f"20261205-0000{len(run_id):02d}-{run_id}"))
    state = RunState(
        run_id=run_id, final_job=f"ic-final-{run_id}-1", final_model_data=f"s3://{BUCKET}/{key}", tuning_job=f"ic-tune-{run_id}-1"
    )
    state.image_uri = image
    state.save(cfg.runs_dir)
    return cfg


def run(cfg, run_id: str, steps: list[str], **options):
    ctx = pipeline.context(cfg, run_id=run_id, yes=True, endpoint_name=ENDPOINT, **options)
    return pipeline.run(steps, ctx)


def checked(gate: Gate, *operations: str) -> None:
    for operation in operations:
        bodies = gate.calls(operation)
        assert bodies, operation
        for body in bodies:
            assert service_model.violations(("sagemaker", operation), body) == [], (operation, body)


def serving_config(sm) -> str:
    return sm.describe_endpoint(EndpointName=ENDPOINT)["EndpointConfigName"]


def first_run_serving(gate, tmp_path) -> tuple:
    """Run one: registered (pending), approved, promoted onto a new endpoint."""
    cfg = seed_run(tmp_path, "one", 0.91)
    run(cfg, "one", ["register"])
    with pytest.raises(StepError, match="no approved version"):
        run(cfg, "one", ["promote"])
    assert gate.calls("CreateModel") == []  # refused before anything was created
    run(cfg, "one", ["approve"], version=1)
    run(cfg, "one", ["promote"])
    return cfg


def test_register_writes_metrics_and_metadata_and_approve_changes_the_status(gate, aws, tmp_path, capsys):
    cfg = seed_run(tmp_path, "reg1", 0.9375)
    run(cfg, "reg1", ["register"])
    (request,) = gate.calls("CreateModelPackage")
    checked(gate, "CreateModelPackage", "CreateModelPackageGroup")
    assert request["ModelPackageGroupName"] == "image-classifier" and request["ModelApprovalStatus"] == "PendingManualApproval"
    container = request["InferenceSpecification"]["Containers"][0]
    assert "@sha256:" in container["Image"] and container["ModelDataUrl"].endswith("/ic-final-reg1-1/output/model.tar.gz")
    metadata = request["CustomerMetadataProperties"]
    assert metadata["test_acc"] == "0.9375" and metadata["ece_after"] == "0.0210" and metadata["training_job"] == "ic-final-reg1-1"
    assert metadata["tuning_job"] == "ic-tune-reg1-1" and metadata["run_id"] == "reg1"
    # the model-quality statistics: in S3 under the run's prefix, with the run's key
    uri = request["ModelMetrics"]["ModelQuality"]["Statistics"]["S3Uri"]
    assert uri == f"s3://{BUCKET}/image-classifier/runs/reg1/registry/model_metrics.json"
    puts = [r for r in aws.requests() if r["method"] == "PUT" and r["path"].endswith("/registry/model_metrics.json")]
    assert puts and puts[-1]["headers"]["x-amz-server-side-encryption-aws-kms-key-id"] == KEY
    statistics = json.loads(boto3.client("s3").get_object(Bucket=BUCKET, Key=uri.split("/", 3)[3])["Body"].read())
    quality = statistics["multiclass_classification_metrics"]
    assert quality["accuracy"]["value"] == 0.9375 and quality["test_ece_after"]["value"] == 0.021
    # the image is kept by the lifecycle: tagged with the protected prefix, the policy's first rule selecting it
    tags = boto3.client("ecr").describe_images(
        repositoryName="image-classifier", imageIds=[{"imageDigest": container["Image"].split("@")[1]}]
    )
    assert "ic-keep-image-classifier-v1" in tags["imageDetails"][0]["imageTags"]
    policy = json.loads(boto3.client("ecr").get_lifecycle_policy(repositoryName="image-classifier")["lifecyclePolicyText"])
    assert policy["rules"][0]["selection"]["tagPrefixList"] == [ecr.PROTECTED_PREFIX]
    # registering the same run again adds nothing
    run(cfg, "reg1", ["register"])
    assert len(gate.calls("CreateModelPackage")) == 1 and "event=already_registered" in capsys.readouterr().out
    run(cfg, "reg1", ["approve"], version=1, reason="reviewed")
    sm = boto3.client("sagemaker")
    arn = sm.list_model_packages(ModelPackageGroupName="image-classifier")["ModelPackageSummaryList"][0]["ModelPackageArn"]
    described = sm.describe_model_package(ModelPackageName=arn)
    assert described["ModelApprovalStatus"] == "Approved" and described["CustomerMetadataProperties"]["test_acc"] == "0.9375"
    run(cfg, "reg1", ["models"])
    assert "event=model_version version=1 status=Approved run_id=reg1 test_acc=0.9375" in capsys.readouterr().out


def test_a_second_run_promotes_blue_green_onto_the_first_runs_endpoint(gate, aws, tmp_path, capsys):
    sm = boto3.client("sagemaker")
    first_run_serving(gate, tmp_path)
    (created,) = gate.calls("CreateEndpoint")
    assert created["EndpointName"] == ENDPOINT and {"Key": "owned-by", "Value": "model-registry:image-classifier"} in created["Tags"]
    assert not any(t["Key"] == "run-id" for t in created["Tags"])  # the group's, not the run's
    first_config = serving_config(sm)
    model = gate.calls("CreateModel")[0]
    assert model["PrimaryContainer"]["Environment"] == {params.ENDPOINT_ENV: ENDPOINT, params.MODEL_VERSION_ENV: "1"}
    assert model["PrimaryContainer"]["ModelPackageName"].endswith("model-package/image-classifier/1")
    capture = gate.calls("CreateEndpointConfig")[0]["DataCaptureConfig"]
    assert capture["DestinationS3Uri"] == f"s3://{BUCKET}/image-classifier/capture/{ENDPOINT}" and capture["KmsKeyId"] == KEY
    assert 0 <= capture["InitialSamplingPercentage"] <= 100

    cfg2 = seed_run(tmp_path, "two", 0.95)
    run(cfg2, "two", ["register", "approve"], version=2)
    run(cfg2, "two", ["promote"])
    (update,) = gate.calls("UpdateEndpoint")
    checked(gate, "UpdateEndpoint", "CreateEndpointConfig", "CreateModel")
    policy = update["DeploymentConfig"]["BlueGreenUpdatePolicy"]
    assert policy["TrafficRoutingConfiguration"]["Type"] == "ALL_AT_ONCE" and policy["TerminationWaitInSeconds"] == 300  # one instance
    alarms = [a["AlarmName"] for a in update["DeploymentConfig"]["AutoRollbackConfiguration"]["Alarms"]]
    assert alarms == ["ic-roll-prod-v2-errors", "ic-roll-prod-v2-p99-latency", "ic-roll-prod-v2-invocation-5xx"]
    put = {b["AlarmName"]: b for b in _alarm_requests(aws)}
    assert put["ic-roll-prod-v2-errors"]["TreatMissingData"] == "notBreaching"
    assert put["ic-roll-prod-v2-errors"]["Dimensions"] == [{"Name": "Endpoint", "Value": "prod"}, {"Name": "ModelVersion", "Value": "2"}]
    assert put["ic-roll-prod-v2-p99-latency"]["ExtendedStatistic"] == "p99"
    # never a delete or a create of the live endpoint: the update kept it serving
    assert [b["EndpointName"] for b in gate.calls("CreateEndpoint")] == [ENDPOINT]
    assert gate.calls("DeleteEndpoint") == []
    assert serving_config(sm) == update["EndpointConfigName"] != first_config
    names = [a["AlarmName"] for a in boto3.client("cloudwatch").describe_alarms(AlarmNamePrefix="ic-roll-")["MetricAlarms"]]
    assert sorted(names) == sorted(alarms)  # version 1's alarms went with its fleet
    capsys.readouterr()
    run(cfg2, "two", ["models"])
    out = capsys.readouterr().out
    assert "version=1 status=Approved run_id=one" in out and "live=none" in out.split("version=1")[1].splitlines()[0]
    assert "version=2 status=Approved run_id=two test_acc=0.9500 test_loss=0.3100 ece_after=0.0210 live=prod" in out

    # cleanup of every run leaves the promoted endpoint, what it uses, and its image
    run(cfg2, "two", ["cleanup"], all_runs=True)
    assert serving_config(sm) == update["EndpointConfigName"]
    assert sm.describe_endpoint_config(EndpointConfigName=update["EndpointConfigName"])
    assert sm.describe_model(ModelName=gate.calls("CreateModel")[-1]["ModelName"])
    assert boto3.client("cloudwatch").describe_alarms(AlarmNamePrefix="ic-roll-")["MetricAlarms"]
    with pytest.raises(sm.exceptions.ClientError):  # run one's model and configuration served nothing any more: released
        sm.describe_endpoint_config(EndpointConfigName=first_config)
    image = gate.calls("CreateModelPackage")[1]["InferenceSpecification"]["Containers"][0]["Image"]
    found = boto3.client("ecr").describe_images(repositoryName="image-classifier", imageIds=[{"imageDigest": image.split("@")[1]}])
    assert "ic-keep-image-classifier-v2" in found["imageDetails"][0]["imageTags"]

    # retire: the endpoint and everything it used
    run(cfg2, "two", ["retire"])
    assert sm.list_endpoints()["Endpoints"] == [] and sm.list_endpoint_configs()["EndpointConfigs"] == []
    assert boto3.client("cloudwatch").describe_alarms(AlarmNamePrefix="ic-roll-")["MetricAlarms"] == []


def _alarm_requests(aws) -> list[dict]:
    from urllib.parse import parse_qs

    out = []
    for request in aws.requests():
        body = request["body"]
        if "Action=PutMetricAlarm" in body:
            fields = {k: v[0] for k, v in parse_qs(body).items()}
            dims = []
            i = 1
            while f"Dimensions.member.{i}.Name" in fields:
                dims.append({"Name": fields[f"Dimensions.member.{i}.Name"], "Value": fields[f"Dimensions.member.{i}.Value"]})
                i += 1
            out.append({**fields, "Dimensions": dims})
        elif request["operation"] == "PutMetricAlarm":
            out.append(json.loads(body))
    return out


def test_an_alarm_during_the_bake_rolls_back_and_the_previous_model_keeps_serving(gate, aws, tmp_path):
    sm = boto3.client("sagemaker")
    first_run_serving(gate, tmp_path)
    before = serving_config(sm)
    cfg2 = seed_run(tmp_path, "bad", 0.5)
    run(cfg2, "bad", ["register", "approve"], version=2)
    gate.rollouts.alarm_fires(r"-v2-errors$")
    with pytest.raises(StepError, match=r"rolled back: alarm ic-roll-prod-v2-errors in ALARM.*serves the previous model"):
        run(cfg2, "bad", ["promote"])
    assert serving_config(sm) == before and sm.describe_endpoint(EndpointName=ENDPOINT)["EndpointStatus"] == "InService"
    assert gate.calls("DeleteEndpoint") == [] and len(gate.calls("CreateEndpoint")) == 1
    new = gate.calls("UpdateEndpoint")[0]["EndpointConfigName"]
    with pytest.raises(sm.exceptions.ClientError):  # the rollout's configuration was released, the serving one kept
        sm.describe_endpoint_config(EndpointConfigName=new)
    alarms = [a["AlarmName"] for a in boto3.client("cloudwatch").describe_alarms(AlarmNamePrefix="ic-roll-")["MetricAlarms"]]
    assert alarms and all("-v1-" in a for a in alarms)


def test_ctrl_c_during_the_rollout_leaves_a_serving_endpoint_and_spares_what_it_moves_to(gate, aws, tmp_path, monkeypatch):
    from deploy.steps import promote

    sm = boto3.client("sagemaker")
    first_run_serving(gate, tmp_path)
    cfg2 = seed_run(tmp_path, "ctrlc", 0.93)
    run(cfg2, "ctrlc", ["register", "approve"], version=2)

    def interrupt(_seconds: float) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(promote.time, "sleep", interrupt)
    with pytest.raises(KeyboardInterrupt):
        run(cfg2, "ctrlc", ["promote"])
    new = gate.calls("UpdateEndpoint")[0]["EndpointConfigName"]
    assert gate.calls("DeleteEndpoint") == [] and gate.calls("DeleteEndpointConfig") == [] and gate.calls("DeleteModel") == []
    state = RunState.model_validate_json((tmp_path / "runs" / "ctrlc" / "state.json").read_text())
    assert {(r.kind, r.name) for r in state.resources} >= {("endpoint-config", new)}  # the run still knows it
    # SageMaker finishes the update by itself; cleanup then spares what serves
    status = sm.describe_endpoint(EndpointName=ENDPOINT)
    while status["EndpointStatus"] != "InService":
        status = sm.describe_endpoint(EndpointName=ENDPOINT)
    assert status["EndpointConfigName"] == new
    run(cfg2, "ctrlc", ["cleanup"])
    assert serving_config(sm) == new and sm.describe_endpoint_config(EndpointConfigName=new)


def test_promotion_refused_by_the_doubled_capacity_changes_nothing(gate, aws, tmp_path):
    first_run_serving(gate, tmp_path)
    cfg2 = seed_run(tmp_path, "quota", 0.93)
    run(cfg2, "quota", ["register", "approve"], version=2)
    for target, body in recorded.answers({"ml.m5.xlarge for endpoint usage": 1.0}).items():
        gate.answer(target, body)
    with pytest.raises(StepError, match="promotion refused before any change"):
        run(cfg2, "quota", ["promote"])
    assert len(gate.calls("CreateModel")) == 1 and gate.calls("UpdateEndpoint") == []


def test_update_requests_sagemaker_would_refuse_are_stopped(gate, aws, tmp_path):
    cfg = first_run_serving(gate, tmp_path)
    ctx = pipeline.context(cfg, run_id="one", yes=True)
    sm = ctx.aws.client("sagemaker")
    config = serving_config(boto3.client("sagemaker"))
    canary = {"Type": "CANARY", "CanarySize": {"Type": "INSTANCE_COUNT", "Value": 1}, "WaitIntervalInSeconds": 600}
    with pytest.raises(RequestRefused, match="needs at least 2 instances"):
        ctx.aws.guard.rules.rollout.instances[config] = 1
        sm.update_endpoint(
            EndpointName=ENDPOINT,
            EndpointConfigName=config,
            DeploymentConfig={"BlueGreenUpdatePolicy": {"TrafficRoutingConfiguration": canary}},
        )
    eleven = [{"AlarmName": f"a{i}"} for i in range(11)]
    with pytest.raises(RequestRefused, match="at most 10"):
        sm.update_endpoint(
            EndpointName=ENDPOINT, EndpointConfigName=config, DeploymentConfig={"AutoRollbackConfiguration": {"Alarms": eleven}}
        )
    assert gate.calls("UpdateEndpoint") == []


def test_a_model_without_a_card_is_registered_without_its_figures(gate, aws, tmp_path, capsys):
    """Script mode's own code may write no model card: the version still names image, artifact and jobs."""
    folder = tmp_path / "bare"
    folder.mkdir()
    (folder / "model.pt").write_bytes(b"weights of the user's own code")
    cfg = seed_run(tmp_path, "bare", 0.5)
    seeding.put("image-classifier/runs/bare/final/ic-final-bare-1/output/model.tar.gz", seeding.tar(folder))  # no card in it
    run(cfg, "bare", ["register"])
    (request,) = gate.calls("CreateModelPackage")
    assert "test_acc" not in request["CustomerMetadataProperties"] and "model_card" not in request["CustomerMetadataProperties"]
    assert request["CustomerMetadataProperties"]["training_job"] == "ic-final-bare-1"
    assert "event=no_model_card" in capsys.readouterr().out


def test_sigterm_to_a_real_promote_mid_rollout_leaves_the_endpoint_serving_and_the_rollout_in_the_runs_state(gate, aws, tmp_path):
    """A real ``python -m deploy.pipeline promote`` waiting on an update that does not end, then SIGTERM."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from tests.helpers import REPO_ROOT

    sm = boto3.client("sagemaker")
    first_run_serving(gate, tmp_path)
    before = serving_config(sm)
    cfg2 = seed_run(tmp_path, "term", 0.93)
    run(cfg2, "term", ["register", "approve"], version=2)
    gate.rollouts.describes = 10**6  # Updating until the test says otherwise
    account = ["--region", REGION, "--role-arn", ROLE, "--bucket", BUCKET, "--runs-dir", str(tmp_path / "runs")]
    args = ["promote", "--endpoint", ENDPOINT, "--run-id", "term", "--yes", "--set", "rollout.poll_s=0.05", *account]
    env = {**os.environ, "AWS_ENDPOINT_URL": gate.url}
    process = subprocess.Popen(
        [sys.executable, "-m", "deploy.pipeline", *args],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while not gate.calls("UpdateEndpoint") or len(gate.calls("DescribeEndpoint")) < 4:
        assert process.poll() is None and time.monotonic() < deadline, process.communicate(timeout=10)
        time.sleep(0.1)
    time.sleep(0.3)  # inside the rollout's wait
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 143, err[-3000:]
    new = gate.calls("UpdateEndpoint")[0]["EndpointConfigName"]
    assert f"event=teardown kind=endpoint-config name={new} action=in_use" in out, out
    assert gate.calls("DeleteEndpoint") == [] and gate.calls("DeleteEndpointConfig") == [] and gate.calls("DeleteModel") == []
    described = sm.describe_endpoint(EndpointName=ENDPOINT)
    assert described["EndpointStatus"] == "Updating" and described["EndpointConfigName"] == before  # still serving the old fleet
    state = RunState.model_validate_json((tmp_path / "runs" / "term" / "state.json").read_text())
    created = {("model", gate.calls("CreateModel")[-1]["ModelName"]), ("endpoint-config", new)}
    assert created <= {(r.kind, r.name) for r in state.resources}  # nothing of the rollout outside the run's state


def test_a_fleet_of_two_takes_the_new_version_as_a_canary(gate, aws, tmp_path):
    cfg = seed_run(tmp_path, "wide", 0.9, rollout={"poll_s": 0.01, "bake_s": 300, "instance_count": 2})
    run(cfg, "wide", ["register", "approve"], version=1)
    run(cfg, "wide", ["promote"])
    cfg2 = seed_run(tmp_path, "wide2", 0.92)  # its own instance_count (1) is for new endpoints: the fleet keeps its 2
    run(cfg2, "wide2", ["register", "approve"], version=2)
    run(cfg2, "wide2", ["promote"])
    (update,) = gate.calls("UpdateEndpoint")
    routing = update["DeploymentConfig"]["BlueGreenUpdatePolicy"]["TrafficRoutingConfiguration"]
    assert routing == {"Type": "CANARY", "CanarySize": {"Type": "CAPACITY_PERCENT", "Value": 25}, "WaitIntervalInSeconds": 300}
    assert gate.calls("CreateEndpointConfig")[-1]["ProductionVariants"][0]["InitialInstanceCount"] == 2
