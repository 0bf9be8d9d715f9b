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
        ({"strategy": "Grid"}, "search: Grid search takes categorical ranges only; lr and weight_decay are continuous"),
        (
            {"strategy": "Grid", "search": {"lr_values": [0.001, 0.01], "weight_decay_values": [0.0001]}, "max_jobs": 8},
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
    grid = _load(strategy="Grid", search={"lr_values": [0.001, 0.01], "weight_decay_values": [0.0001]})
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
        "TrainingJobDefinition": {"ResourceConfig": {"InstanceType": "ml.g5.xlarge", "InstanceCount": 1, "VolumeSizeInGB": 50}},
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
    assert cfg.volume_kms_key_id and cfg.subnets and cfg.search.lr_values  # each from a commented line
