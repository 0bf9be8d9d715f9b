"""The dry run of every step, over configurations a real account would use, sends only what AWS accepts.

Each recorded request is checked against the service model's max, pattern and enum
(``deploy.service_model``: botocore's own validator skips them) and against SageMaker's
cross-field rules (``deploy.rules.RequestRules``, in order, so a reused name shows too). Then
each configuration's point is asserted on the requests themselves.
"""

from __future__ import annotations

import json

import pytest

from deploy import pipeline, service_model
from deploy.config import load_config
from deploy.rules import RequestRules
from tests.aws.conftest import BUCKET, REGION, ROLE

# serverless refuses a VPC (one configuration here has one): its dry runs are below and in tests/aws/test_hosting.py
EVERY_STEP = [s.name for s in pipeline.STEPS if s.name != "serverless"]
KEY_ARN = "arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"
VPC = {"subnets": ["subnet-0123456789abcdef0"], "security_group_ids": ["sg-0123456789abcdef0"]}
CONFIGS = {
    "default": {},
    "hyperband_vpc_backbones": {"strategy": "Hyperband", **VPC, "search": {"models": ["resnet18", "resnet50"]}},
    "kms_gpu_training": {"kms_key_id": "alias/team-key", "volume_kms_key_id": KEY_ARN, "train_instance_type": "ml.g5.2xlarge"},
    "gpu_endpoint": {"endpoint_instance_type": "ml.g5.xlarge", "kms_key_id": KEY_ARN},
    # an image built with CUDA_COMPAT_IMAGE: GPU batch transform, and an endpoint on a driver-535 host image
    "gpu_compat_transform": {
        "endpoint_instance_type": "ml.g6.xlarge",
        "inference_ami_version": "al2-ami-sagemaker-inference-gpu-2-1",
        "transform_instance_type": "ml.g4dn.xlarge",
        "image_cuda_compat": True,
    },
    # train and validation as shards (deploy.data): FastFile for them, File for the rest
    "sharded_data": {"data_format": "shards"},
}
WITH_DATA = ("default", "sharded_data")
GPU_ENDPOINT = ("gpu_endpoint", "gpu_compat_transform")  # Clarify's shadow endpoint takes no host image: no clarify step
DIGEST = "@sha256:" + "0" * 64  # a dry run's placeholder for the pushed image's digest


def _dry_run(tmp_path, steps, data=None, **overrides):
    cfg = load_config(overrides={"region": REGION, "role_arn": ROLE, "bucket": BUCKET, "runs_dir": str(tmp_path), **overrides}, environ={})
    ctx = pipeline.context(cfg, dry_run=True, data=data, version=1, endpoint_name="prod")
    pipeline.run(steps, ctx)
    return ctx.aws.dry_run.calls


def _checked(calls, cuda_compat=False):
    """Every request valid; the requests by operation (a list each)."""
    rules, by_operation = RequestRules(cuda_compat=cuda_compat), {}
    for call in calls:
        problems = [str(v) for v in service_model.violations((call["service"], call["operation"]), call["request"])]
        problems += rules.refusals(call["service"], call["operation"], call["request"])
        assert problems == [], f"{call['operation']}: {problems}"
        rules.record(call["service"], call["operation"], call["request"])
        by_operation.setdefault(call["operation"], []).append(call["request"])
    return by_operation


@pytest.fixture(scope="module", params=list(CONFIGS))
def recorded(request, tmp_path_factory, emulator):
    """emulator: only so that nothing could reach AWS; the dry run sends nothing anywhere."""
    name = request.param
    steps = EVERY_STEP if name in WITH_DATA else [s for s in EVERY_STEP if s != "data"]  # data needs --data
    steps = [s for s in steps if s != "clarify" or name not in GPU_ENDPOINT]
    overrides = dict(CONFIGS[name])
    if name in WITH_DATA:  # the data step's real pre-flight on real images, nothing uploaded
        overrides["data"] = str(request.getfixturevalue("digits_data"))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AWS_ENDPOINT_URL", emulator.url)
        for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": REGION}.items():
            patch.setenv(key, value)
        calls = _dry_run(tmp_path_factory.mktemp(name), steps, **overrides)
    return name, _checked(calls, cuda_compat=overrides.get("image_cuda_compat", False))


def test_every_request_passes_the_service_model_and_the_rules(recorded):
    name, by_operation = recorded
    expected = {
        "CreateHyperParameterTuningJob",
        "CreateTrainingJob",
        "CreateModel",
        "CreateEndpointConfig",
        "CreateEndpoint",
        "CreateTransformJob",
        *(() if name in GPU_ENDPOINT else ("CreateProcessingJob",)),
        # day two: register, approve/reject, promote (onto an existing endpoint: the update path), retire
        "CreateModelPackageGroup",
        "CreateModelPackage",
        "UpdateModelPackage",
        "UpdateEndpoint",
        "PutMetricAlarm",
        "AddTags",
        "DeleteEndpoint",
        "PutImage",
    }
    assert expected <= set(by_operation), name
    images = [r["TrainingJobDefinition"]["AlgorithmSpecification"]["TrainingImage"] for r in by_operation["CreateHyperParameterTuningJob"]]
    images += [r["AlgorithmSpecification"]["TrainingImage"] for r in by_operation["CreateTrainingJob"]]
    images += [r["PrimaryContainer"]["Image"] for r in by_operation["CreateModel"] if "Image" in r.get("PrimaryContainer", {})]
    images += [r["InferenceSpecification"]["Containers"][0]["Image"] for r in by_operation["CreateModelPackage"]]
    assert len(set(images)) == 1 and images[0].endswith("/image-classifier" + DIGEST), images  # never a tag
    names = [r["EndpointName"] for r in by_operation["CreateEndpoint"]]
    assert len(names) == len(set(names)) == 3  # the real-time, the multi-model and the asynchronous endpoint


def test_what_each_configuration_changes_in_the_requests(recorded):
    name, by = recorded
    tuning = by["CreateHyperParameterTuningJob"][0]["HyperParameterTuningJobConfig"]
    training = by["CreateTrainingJob"][0]
    processing = by.get("CreateProcessingJob", [{"NetworkConfig": {}}])[0]
    configs = {c["EndpointConfigName"]: c for c in by["CreateEndpointConfig"]}
    realtime = next(c for n, c in configs.items() if n.startswith("ic-endpoint-"))
    multi_model = next(c for n, c in configs.items() if n.startswith("ic-mme-"))
    assert processing["NetworkConfig"].get("EnableNetworkIsolation") is not True  # Clarify calls its shadow endpoint
    assert multi_model["ProductionVariants"][0]["InstanceType"] == "ml.m5.xlarge"
    if name == "default":
        assert tuning["TrainingJobEarlyStoppingType"] == "Auto" and tuning["ResourceLimits"]["MaxNumberOfTrainingJobs"] == 12
        assert "DebugHookConfig" in training and "ProfilerConfig" in training  # auto: asked for
    if name == "hyperband_vpc_backbones":
        assert tuning["Strategy"] == "Hyperband" and tuning["TrainingJobEarlyStoppingType"] == "Off"
        categorical = {r["Name"]: r["Values"] for r in tuning["ParameterRanges"]["CategoricalParameterRanges"]}
        assert categorical["model"] == ["resnet18", "resnet50"]
        assert training["VpcConfig"]["Subnets"] == VPC["subnets"] and processing["NetworkConfig"]["VpcConfig"]["Subnets"] == VPC["subnets"]
    if name == "kms_gpu_training":
        assert "VolumeKmsKeyId" not in training["ResourceConfig"]  # ml.g5: local NVMe
        assert training["OutputDataConfig"]["KmsKeyId"] == "alias/team-key"  # outputs take an alias
        assert by["CreateTransformJob"][0]["TransformResources"]["VolumeKmsKeyId"] == KEY_ARN
        assert processing["ProcessingResources"]["ClusterConfig"]["VolumeKmsKeyId"] == KEY_ARN
        assert processing["ProcessingOutputConfig"]["KmsKeyId"] == "alias/team-key"
        assert realtime["KmsKeyId"] == "alias/team-key"
    channels = by["CreateHyperParameterTuningJob"][0]["TrainingJobDefinition"]["InputDataConfig"] + training["InputDataConfig"]
    fast_file = {c["ChannelName"] for c in channels if c.get("InputMode") == "FastFile"}
    assert fast_file == ({"train", "validation"} if name == "sharded_data" else set()), channels
    assert all(c.get("InputMode", "File") in ("File", "FastFile") for c in channels)
    variant = realtime["ProductionVariants"][0]
    transform = by["CreateTransformJob"][0]
    if name not in GPU_ENDPOINT:  # CPU hosts: no host image asked for
        assert "InferenceAmiVersion" not in variant and "TransformAmiVersion" not in transform["TransformResources"]
    if name == "gpu_endpoint":
        assert variant["InstanceType"] == "ml.g5.xlarge" and "KmsKeyId" not in realtime
        assert variant["InferenceAmiVersion"] == "al2023-ami-sagemaker-inference-gpu-4-1"  # driver 580: the CUDA 13 build runs natively
        assert "InferenceAmiVersion" not in multi_model["ProductionVariants"][0]  # multi-model: CPU only
        assert multi_model["KmsKeyId"] == KEY_ARN
    if name == "gpu_compat_transform":
        assert variant["InstanceType"] == "ml.g6.xlarge" and variant["InferenceAmiVersion"] == "al2-ami-sagemaker-inference-gpu-2-1"
        assert transform["TransformResources"] == {
            "InstanceType": "ml.g4dn.xlarge",
            "InstanceCount": 1,
            "TransformAmiVersion": "al2-ami-sagemaker-batch-gpu-535",
        }
        assert transform["Environment"] == {"SAGEMAKER_CUDA_COMPAT_DISABLED": "true"}
        assert len(by["CreateTransformJob"]) >= 2
        for job in by["CreateTransformJob"][1:]:  # the explain step's job keeps the host setting beside its own
            assert job["Environment"]["SAGEMAKER_CUDA_COMPAT_DISABLED"] == "true" and "IMAGE_CLASSIFIER_EXPLAIN" in job["Environment"]


def test_grid_search_sends_categorical_ranges_and_no_job_limit(aws, tmp_path):
    grid = {"strategy": "Grid", "search": {"lr_scale_values": [0.5, 2.0], "weight_decay_values": [0.0001], "models": ["resnet18"]}}
    by = _checked(_dry_run(tmp_path, ["tune"], **grid))
    config = by["CreateHyperParameterTuningJob"][0]["HyperParameterTuningJobConfig"]
    assert "MaxNumberOfTrainingJobs" not in config["ResourceLimits"]
    assert not config["ParameterRanges"].get("ContinuousParameterRanges") and not config["ParameterRanges"].get("IntegerParameterRanges")
    assert {r["Name"]: r["Values"] for r in config["ParameterRanges"]["CategoricalParameterRanges"]}["lr_scale"] == ["0.5", "2.0"]
    assert aws.requests() == []


def _command_line_dry_run(tmp_path, capfd, *flags):
    """``python -m deploy.pipeline all --with serverless --dry-run ...`` as a user types it; the requests it prints."""
    argv = ["all", "--with", "serverless", "--dry-run", "--region", REGION, "--role-arn", ROLE, "--bucket", BUCKET, *flags]
    argv += ["--set", f"runs_dir={tmp_path}"]
    assert pipeline.main(argv) == 0, capfd.readouterr().err[-3000:]
    captured = capfd.readouterr()
    document = captured.out[captured.out.index("[\n") :]  # in-process, the SDK's config log lines come first
    return json.loads(document), captured.err


# every request that creates something running the image (or the user's data) and carries isolation
ISOLATED = {
    "CreateHyperParameterTuningJob": lambda r: r["TrainingJobDefinition"].get("EnableNetworkIsolation"),
    "CreateTrainingJob": lambda r: r.get("EnableNetworkIsolation"),
    "CreateModel": lambda r: r.get("EnableNetworkIsolation"),
}


@pytest.mark.parametrize("isolation", ["true", "false"])
def test_isolation_stays_where_the_user_put_it_and_only_the_serverless_model_goes_without(aws, tmp_path, capfd, isolation):
    calls, err = _command_line_dry_run(tmp_path, capfd, "--network-isolation", isolation)
    _checked(calls)
    seen = {}
    for call in calls:
        if call["operation"] in ISOLATED:
            name = (
                call["request"].get("ModelName") or call["request"].get("TrainingJobName") or call["request"]["HyperParameterTuningJobName"]
            )
            seen[name] = bool(ISOLATED[call["operation"]](call["request"]))
    serverless = [name for name in seen if name.startswith("ic-serverless-")]
    others = {name: value for name, value in seen.items() if name not in serverless}
    assert len(serverless) == 1 and seen[serverless[0]] is False
    assert {n.split("-")[1] for n in others} >= {"tune", "final", "model"}, sorted(others)  # the jobs and the real-time model
    assert others == dict.fromkeys(others, isolation == "true"), others  # each keeps the configured value
    assert f"event=network_isolation model={serverless[0]} isolated=false reason=serverless_endpoints_refuse_it" in err
