"""The service model's max, pattern and enum, which botocore's own validator skips, checked by deploy.service_model."""

from __future__ import annotations

import botocore.session
import pytest
from botocore.validate import validate_parameters

from deploy import java_regex, service_model

# every service deploy/ talks to, or will (Service Quotas, Application Auto Scaling)
SERVICES = ("sagemaker", "sagemaker-runtime", "s3", "ecr", "sts", "kms", "iam", "logs", "service-quotas", "application-autoscaling")

GOOD_TRAINING_JOB = {
    "TrainingJobName": "ic-final-20261201-120000-1",
    "AlgorithmSpecification": {"TrainingImage": "123456789012.dkr.ecr.us-east-1.amazonaws.com/ic:latest", "TrainingInputMode": "File"},
    "RoleArn": "arn:aws:iam::123456789012:role/SageMakerRole",
    "OutputDataConfig": {"S3OutputPath": "s3://bucket/prefix"},
    "ResourceConfig": {"InstanceType": "ml.g5.xlarge", "InstanceCount": 1, "VolumeSizeInGB": 50},
    "StoppingCondition": {"MaxRuntimeInSeconds": 3600},
    "Tags": [{"Key": "project", "Value": "image-classifier"}, {"Key": "team", "Value": "vision équipe 1/2"}],
}


@pytest.mark.parametrize("name", SERVICES)
def test_every_pattern_of_the_services_translates(name):
    """An untranslatable pattern would be skipped silently at run time: here it fails, named."""
    shapes = botocore.session.get_session().get_service_model(name)._shape_resolver._shape_map
    patterns = {shape["pattern"] for shape in shapes.values() if "pattern" in shape}
    failed = {}
    for pattern in patterns:
        try:
            java_regex.compiled(pattern)
        except java_regex.Untranslatable as exc:
            failed[pattern] = str(exc)
    assert failed == {}, f"{len(failed)} of {len(patterns)} patterns of {name} do not translate"


@pytest.mark.parametrize(
    ("pattern", "good", "bad"),
    [
        (r"^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}", ["ic-final-x-1", "a--b"], ["ic_final", "-a", "a" * 64, ""]),
        (r"([\p{L}\p{Z}\p{N}_.:/=+\-@]*)", ["équipe 1/2=+-@", "日本語", ""], ["a;b", "a,b", "a\tb"]),
        (r"[\u0020-\uD7FF\uE000-\uFFFD\uD800\uDC00-\uDBFF\uDFFF\t]*", ["ok \U0001f600", "\t"], ["\x01", "a\nb"]),
        (
            r"arn:[\p{Alnum}\-]+:lambda:[\p{Alnum}\-]+:[0-9]{12}:function:.*",
            ["arn:aws:lambda:us-east-1:123456789012:function:f"],
            ["arn:aws:lambda:us_east:1:function:f"],
        ),
        (r"([\p{L}\p{Z}\p{N}_.:\/=+\-@]*)${1,128}", ["a b"], ["a;"]),  # a quantified anchor
        (r"(arn:aws[a-z\-]*:sagemaker:[a-z0-9\-]*:[0-9]{12}:[a-z\-]*/)?([a-zA-Z0-9]([a-zA-Z0-9\-]){0,62})(?<!-)", ["abc"], ["abc-"]),
        (r"[\w-_]*", ["a-_b"], ["a.b"]),
    ],
)
def test_java_patterns_match_the_whole_value_as_java_does(pattern, good, bad):
    compiled = java_regex.compiled(pattern)
    assert [v for v in good if not compiled.fullmatch(v)] == []
    assert [v for v in bad if compiled.fullmatch(v)] == []


def test_what_java_has_and_python_does_not_is_refused_not_guessed():
    for pattern in (r"[a-z&&[^aeiou]]", r"\p{InGreek}", r"[\P{L}]", r"\h+", r"\Qa.b\E"):
        with pytest.raises(java_regex.Untranslatable):
            java_regex.compiled(pattern)


def test_a_good_request_has_no_violations():
    assert service_model.violations(("sagemaker", "CreateTrainingJob"), GOOD_TRAINING_JOB) == []


def test_max_pattern_and_enum_are_found_where_botocore_passes_the_request():
    bad = {
        **GOOD_TRAINING_JOB,
        "TrainingJobName": "ic_final_" + "x" * 60,  # pattern and max
        "ResourceConfig": {**GOOD_TRAINING_JOB["ResourceConfig"], "InstanceType": "ml.g5.huge"},  # enum
        "Tags": [{"Key": "team", "Value": "a;b"}],  # pattern
        "StoppingCondition": {"MaxRuntimeInSeconds": 3600},
    }
    operation = botocore.session.get_session().get_service_model("sagemaker").operation_model("CreateTrainingJob")
    validate_parameters(bad, operation.input_shape)  # botocore's own validator: no complaint
    found = {(v.path, v.constraint) for v in service_model.violations(operation, bad)}
    assert found == {
        ("TrainingJobName", "max"),
        ("TrainingJobName", "pattern"),
        ("ResourceConfig.InstanceType", "enum"),
        ("Tags[0].Value", "pattern"),
    }


def test_numbers_lists_and_maps_have_their_bounds_checked():
    request = {
        "HyperParameterTuningJobName": "t",
        "HyperParameterTuningJobConfig": {
            "Strategy": "Bayesian",
            "ResourceLimits": {"MaxNumberOfTrainingJobs": 10, "MaxParallelTrainingJobs": 2},
            "ParameterRanges": {"CategoricalParameterRanges": [{"Name": "x", "Values": [str(i) for i in range(31)]}]},
        },
    }
    found = {(v.path, v.constraint) for v in service_model.violations(("sagemaker", "CreateHyperParameterTuningJob"), request)}
    assert ("HyperParameterTuningJobConfig.ParameterRanges.CategoricalParameterRanges[0].Values", "max") in found
    hyperparameters = {"HyperParameters": {f"k{i}": "v" for i in range(101)}}
    found = {
        (v.path, v.constraint)
        for v in service_model.violations(("sagemaker", "CreateTrainingJob"), {**GOOD_TRAINING_JOB, **hyperparameters})
    }
    assert ("HyperParameters", "max") in found
    found = {
        v.constraint
        for v in service_model.violations(
            ("sagemaker", "CreateTrainingJob"), {**GOOD_TRAINING_JOB, "StoppingCondition": {"MaxRuntimeInSeconds": 0}}
        )
    }
    assert found == {"min"}
    assert service_model.skipped_patterns == {}
