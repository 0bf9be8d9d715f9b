"""SageMaker's cross-field rules, refused before anything is sent: in the configuration and on requests."""

from __future__ import annotations

import re

import pytest

from deploy import instances
from deploy.config import ConfigError, load_config
from deploy.rules import RequestRules
from tests.aws.conftest import BUCKET, REGION, ROLE
from tests.helpers import REPO_ROOT

BASE = {"region": REGION, "role_arn": ROLE, "bucket": BUCKET}
KEY_ARN = "arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"


def _load(**overrides):
    return load_config(overrides={**BASE, **overrides}, environ={})


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"strategy": "Hyperband", "early_stopping": "Auto"}, "early_stopping: Hyperband stops unpromising trials itself"),
        ({"strategy": "Grid"}, "search: Grid search takes categorical ranges only; lr_scale and weight_decay are continuous"),
        (
            {"strategy": "Grid", "search": {"lr_scale_values": [0.5, 2.0], "weight_decay_values": [0.0001]}, "max_jobs": 8},
            "max_jobs: Grid search runs every combination",
        ),
        (
            {"kms_key_id": "alias/team-key", "train_instance_type": "ml.m5.xlarge"},
            "kms_key_id: 'alias/team-key' is an alias; the volume KMS key",
        ),
        ({"volume_kms_key_id": "alias/team-key"}, "volume_kms_key_id: 'alias/team-key' is not a key id or key ARN"),
        ({"multi_model_instance_type": "ml.g5.xlarge"}, "multi_model_instance_type: 'ml.g5.xlarge' is accelerated; multi-model endpoints"),
        ({"train_instance_type": "ml.g5.huge"}, "train_instance_type: 'ml.g5.huge' is not a SageMaker instance type for training"),
        (
            {"endpoint_instance_type": "ml.c5n.xlarge"},
            "endpoint_instance_type: 'ml.c5n.xlarge' is not a SageMaker instance type for hosting",
        ),
        (
            {"transform_instance_type": "ml.t3.medium"},
            "transform_instance_type: 'ml.t3.medium' is not a SageMaker instance type for transform",
        ),
        ({"max_jobs": 2, "max_parallel_jobs": 3}, "max_parallel_jobs: max_parallel_jobs (3) exceeds max_jobs (2)"),
        ({"subnets": ["subnet-0123456789abcdef0"]}, "subnets: subnets and security_group_ids go together"),
        ({"search": {"batch_size": list(range(1, 32))}}, "search.batch_size: 31 values; SageMaker takes at most 30"),
        ({"debugger": "sometimes"}, "debugger: Input should be 'auto', 'on' or 'off'"),
        # GPU hosts (docs/image.md, "GPU drivers"): the image's CUDA 13 build needs driver 580 and sm_75+
        (
            {"train_instance_type": "ml.p3.2xlarge"},
            "train_instance_type: ml.p3.2xlarge is a V100 (sm_70): the image's CUDA 13 build has no kernels for it",
        ),
        ({"endpoint_instance_type": "ml.p2.xlarge"}, "endpoint_instance_type: ml.p2.xlarge is a K80 (sm_37)"),
        ({"train_instance_type": "ml.p6e-gb200.36xlarge"}, "is an Arm (Grace) host: the image is built for linux/amd64"),
        (
            {"transform_instance_type": "ml.g4dn.xlarge"},
            "transform_instance_type: ml.g4dn.xlarge is a GPU; SageMaker's batch transform hosts run driver 470 or 535 (no 580 AMI)",
        ),
        ({"transform_instance_type": "ml.g4dn.xlarge"}, "--build-arg CUDA_COMPAT_IMAGE=nvidia/cuda:13.0.2-base-ubuntu24.04"),
        ({"transform_instance_type": "ml.p3.2xlarge", "image_cuda_compat": True}, "transform_instance_type: ml.p3.2xlarge is a V100"),
        (
            {"inference_ami_version": "al2-ami-sagemaker-inference-gpu-3-1"},
            "inference_ami_version: al2-ami-sagemaker-inference-gpu-3-1 has driver 550, not a forward-compatibility target of CUDA 13",
        ),
        (
            {"inference_ami_version": "al2-ami-sagemaker-inference-gpu-2"},
            "inference_ami_version: al2-ami-sagemaker-inference-gpu-2 has driver 535: the CUDA 13 build runs there only with",
        ),
        ({"inference_ami_version": "al2-ami-sagemaker-inference-neuron-2"}, "is not a GPU host image"),
        (
            {"inference_ami_version": "gpu-9"},
            "inference_ami_version: 'gpu-9' is not one of the service model's ProductionVariantInferenceAmiVersion",
        ),
        ({"image_tag": "v1:latest"}, "image_tag: 'v1:latest' is not an image tag"),
    ],
)
def test_each_rule_names_the_field_and_the_fix(overrides, expected):
    with pytest.raises(ConfigError) as raised:
        _load(**overrides)
    assert expected in str(raised.value), str(raised.value)


def test_what_the_rules_leave_alone_loads_with_the_right_derived_values():
    hyperband = _load(strategy="Hyperband")
    assert hyperband.early_stopping_type == "Off"
    assert _load().early_stopping_type == "Auto" and _load().job_limit == 12
    grid = _load(strategy="Grid", search={"lr_scale_values": [0.5, 2.0], "weight_decay_values": [0.0001]})
    assert grid.job_limit is None
    # an alias is fine where every volume is local NVMe (nothing takes it there) and for outputs
    gpu = _load(kms_key_id="alias/team-key", train_instance_type="ml.g5.xlarge", clarify_instance_type="ml.g5.xlarge")
    assert gpu.volume_key("ml.g5.xlarge") is None and gpu.endpoint_key("ml.m5.xlarge") == "alias/team-key"
    assert _load(kms_key_id=KEY_ARN).volume_key("ml.m5.xlarge") == KEY_ARN
    assert _load(debugger=False).debugger == "off" and _load(profiler="true").profiler == "on"


@pytest.mark.parametrize(
    ("instance_type", "nvme", "accelerated"),
    [
        ("ml.g5.xlarge", True, True),
        ("ml.g4dn.xlarge", True, True),
        ("ml.p4de.24xlarge", True, True),
        ("ml.p6-b200.48xlarge", True, True),
        ("ml.trn1.2xlarge", True, True),
        ("ml.m5d.large", True, False),
        ("ml.m5.xlarge", False, False),
        ("ml.c7i-flex.large", False, False),
        ("ml.inf2.xlarge", False, True),
        ("ml.p3.2xlarge", False, True),
    ],
)
def test_instance_facts(instance_type, nvme, accelerated):
    assert instances.has_local_nvme(instance_type) is nvme
    assert instances.is_accelerated(instance_type) is accelerated


def _tuning(strategy, early="Off", ranges=None, limit=4):
    return {
        "HyperParameterTuningJobName": "t",
        "HyperParameterTuningJobConfig": {
            "Strategy": strategy,
            "TrainingJobEarlyStoppingType": early,
            "ResourceLimits": {"MaxParallelTrainingJobs": 2, **({"MaxNumberOfTrainingJobs": limit} if limit else {})},
            "ParameterRanges": ranges or {"CategoricalParameterRanges": [{"Name": "b", "Values": ["1", "2"]}]},
        },
        "TrainingJobDefinition": {
            "HyperParameterTuningResourceConfig": {"InstanceType": "ml.g5.xlarge", "InstanceCount": 1, "VolumeSizeInGB": 50}
        },
    }


@pytest.mark.parametrize(
    ("operation", "request_", "expected"),
    [
        ("CreateHyperParameterTuningJob", _tuning("Hyperband", early="Auto"), "TrainingJobEarlyStoppingType"),
        (
            "CreateHyperParameterTuningJob",
            _tuning("Grid", limit=None, ranges={"ContinuousParameterRanges": [{"Name": "lr"}]}),
            "categorical ranges only",
        ),
        ("CreateHyperParameterTuningJob", _tuning("Grid", limit=4), "MaxNumberOfTrainingJobs"),
        ("CreateTrainingJob", {"ResourceConfig": {"InstanceType": "ml.g5.xlarge", "VolumeKmsKeyId": KEY_ARN}}, "local NVMe"),
        ("CreateTrainingJob", {"ResourceConfig": {"InstanceType": "ml.m5.xlarge", "VolumeKmsKeyId": "alias/k"}}, "takes no alias"),
        ("CreateTransformJob", {"TransformResources": {"InstanceType": "ml.g4dn.xlarge", "VolumeKmsKeyId": "alias/k"}}, "local NVMe"),
        (
            "CreateEndpointConfig",
            {"KmsKeyId": "alias/k", "ProductionVariants": [{"InstanceType": "ml.g5.xlarge", "ModelName": "m"}]},
            "KmsKeyId",
        ),
        (
            "CreateProcessingJob",
            {
                "AppSpecification": {"ImageUri": "205585389593.dkr.ecr.us-east-1.amazonaws.com/sagemaker-clarify-processing:1.0"},
                "NetworkConfig": {"EnableNetworkIsolation": True},
            },
            "cannot run isolated",
        ),
    ],
)
def test_request_rules_refuse_what_sagemaker_refuses(operation, request_, expected):
    problems = RequestRules().refusals("sagemaker", operation, request_)
    assert any(expected in p for p in problems), problems


def test_request_rules_allow_the_legal_forms():
    rules = RequestRules()
    assert (
        rules.refusals(
            "sagemaker", "CreateTransformJob", {"TransformResources": {"InstanceType": "ml.m5.xlarge", "VolumeKmsKeyId": "alias/k"}}
        )
        == []
    )
    assert rules.refusals("sagemaker", "CreateHyperParameterTuningJob", _tuning("Hyperband")) == []
    assert rules.refusals("sagemaker", "CreateHyperParameterTuningJob", _tuning("Grid", limit=None)) == []


def test_a_multi_model_model_on_a_gpu_endpoint_and_a_reused_name_are_refused():
    rules = RequestRules()
    model = {"ModelName": "ic-mme-r-1", "PrimaryContainer": {"Mode": "MultiModel"}}
    assert rules.refusals("sagemaker", "CreateModel", model) == []
    rules.record("sagemaker", "CreateModel", model)
    config = {"EndpointConfigName": "c", "ProductionVariants": [{"ModelName": "ic-mme-r-1", "InstanceType": "ml.g5.xlarge"}]}
    assert any("CPU instance types only" in p for p in rules.refusals("sagemaker", "CreateEndpointConfig", config))
    assert any("created earlier in this run" in p for p in rules.refusals("sagemaker", "CreateModel", model))


def test_the_example_configuration_loads_as_is_and_with_every_commented_field(tmp_path):
    example = (REPO_ROOT / "deploy" / "config.example.toml").read_text()
    load_config(REPO_ROOT / "deploy" / "config.example.toml", environ={})
    uncommented = re.sub(r"(?m)^# (\w+ = .*)$", r"\1", example)
    assert uncommented.count("\n# ") < example.count("\n# ")
    (tmp_path / "config.toml").write_text(uncommented)
    cfg = load_config(tmp_path / "config.toml", environ={})
    assert cfg.volume_kms_key_id and cfg.subnets and cfg.search.lr_scale_values  # each from a commented line


def test_gpu_hosts_the_image_can_run_on_load():
    compat = _load(
        transform_instance_type="ml.g5.xlarge", image_cuda_compat=True, inference_ami_version="al2-ami-sagemaker-inference-gpu-2-1"
    )
    assert compat.transform_instance_type == "ml.g5.xlarge"
    native = _load(train_instance_type="ml.p5.48xlarge", endpoint_instance_type="ml.g4dn.xlarge")
    assert native.inference_ami_version is None  # deploy/ sends al2023-ami-sagemaker-inference-gpu-4-1 for GPU variants


def test_clarify_refuses_a_gpu_shadow_endpoint_before_anything_is_sent(aws, tmp_path, capsys):
    from deploy import pipeline

    args = ["--region", REGION, "--role-arn", ROLE, "--bucket", BUCKET, "--runs-dir", str(tmp_path), "--yes"]
    assert pipeline.main(["clarify", *args, "--endpoint-instance-type", "ml.g5.xlarge"]) == 2
    err = capsys.readouterr().err
    assert "endpoint_instance_type: 'ml.g5.xlarge' is a GPU: Clarify's shadow endpoint takes no InferenceAmiVersion" in err
    assert "(--endpoint-instance-type ml.m5.xlarge)" in err
    assert pipeline.main(["deploy", *args, "--endpoint-instance-type", "ml.g5.xlarge", "--validate-only"]) == 0  # without clarify: fine
    assert aws.requests() == []


def _variant(instance_type, ami=None):
    return {"VariantName": "v", "ModelName": "m", "InstanceType": instance_type, **({"InferenceAmiVersion": ami} if ami else {})}


@pytest.mark.parametrize(
    ("operation", "request_", "compat", "expected"),
    [
        (
            "CreateEndpointConfig",
            {"ProductionVariants": [_variant("ml.g5.xlarge")]},
            False,
            "default GPU host image has driver 470, 535 or 550",
        ),
        (
            "CreateEndpointConfig",  # an async endpoint: the same variants
            {"ProductionVariants": [_variant("ml.g6.xlarge")], "AsyncInferenceConfig": {"OutputConfig": {"S3OutputPath": "s3://b/o"}}},
            False,
            "set InferenceAmiVersion al2023-ami-sagemaker-inference-gpu-4-1",
        ),
        (
            "CreateEndpointConfig",
            {"ProductionVariants": [_variant("ml.g5.xlarge", "al2-ami-sagemaker-inference-gpu-2-1")]},
            False,
            "driver 535",
        ),
        (
            "CreateEndpointConfig",
            {"ShadowProductionVariants": [_variant("ml.p3.2xlarge", "al2023-ami-sagemaker-inference-gpu-4-1")]},
            True,
            "V100",
        ),
        ("CreateTransformJob", {"TransformResources": {"InstanceType": "ml.g5.xlarge"}}, False, "forward-compatibility libraries"),
        (
            "CreateTransformJob",
            {"TransformResources": {"InstanceType": "ml.g5.xlarge"}},
            True,
            "GPU transform needs al2-ami-sagemaker-batch-gpu-535",
        ),
        (
            "CreateTransformJob",
            {"TransformResources": {"InstanceType": "ml.g5.xlarge", "TransformAmiVersion": "al2-ami-sagemaker-batch-gpu-535"}},
            True,
            "Environment.SAGEMAKER_CUDA_COMPAT_DISABLED: must be 'true'",
        ),
        (
            "CreateTrainingJob",
            {"ResourceConfig": {"InstanceType": "ml.p3.8xlarge"}},
            True,
            "ResourceConfig.InstanceType: ml.p3.8xlarge is a V100",
        ),
        ("CreateHyperParameterTuningJob", {"TrainingJobDefinition": {"ResourceConfig": {"InstanceType": "ml.p2.xlarge"}}}, True, "K80"),
    ],
)
def test_gpu_requests_without_a_host_that_can_run_the_image_are_refused(operation, request_, compat, expected):
    problems = RequestRules(cuda_compat=compat).refusals("sagemaker", operation, request_)
    assert any(expected in p for p in problems), problems


def test_gpu_requests_on_hosts_that_run_the_image_pass():
    native = {"ProductionVariants": [_variant("ml.g4dn.xlarge", "al2023-ami-sagemaker-inference-gpu-4-1"), _variant("ml.m5.xlarge")]}
    assert RequestRules().refusals("sagemaker", "CreateEndpointConfig", native) == []
    on_535 = {"ProductionVariants": [_variant("ml.g5.xlarge", "al2-ami-sagemaker-inference-gpu-2-1")]}
    assert RequestRules(cuda_compat=True).refusals("sagemaker", "CreateEndpointConfig", on_535) == []
    transform = {
        "TransformResources": {"InstanceType": "ml.g6.xlarge", "TransformAmiVersion": "al2-ami-sagemaker-batch-gpu-535"},
        "Environment": {"SAGEMAKER_CUDA_COMPAT_DISABLED": "true"},
    }
    assert RequestRules(cuda_compat=True).refusals("sagemaker", "CreateTransformJob", transform) == []
    assert RequestRules().refusals("sagemaker", "CreateTrainingJob", {"ResourceConfig": {"InstanceType": "ml.g4dn.xlarge"}}) == []
