"""The request guard reads the requests the pinned SDK really sends, captured through the test gate.

Each request here is built by SDK v2 (through ``deploy.sdk``, on a plain boto3 session without our
guard) and sent to the emulator through the gate, which keeps it as sent; the guard's rules
(``deploy.rules.RequestRules``) then judge that captured request. Tuning jobs carry their instances
in ``HyperParameterTuningResourceConfig``, one definition or several (``TrainingJobDefinitions``),
and the SDK adds the organisation's defaults from its own config file
(``SAGEMAKER_USER_CONFIG_OVERRIDE``), which the configuration never sees.
"""

from __future__ import annotations

import re

import boto3
import pytest

from deploy import pipeline, sdk
from deploy.config import load_config
from deploy.rules import RequestRefused, RequestRules
from deploy.state import RunState
from tests.aws.conftest import BUCKET, REGION, ROLE, pinned_image

ORG_ALIAS = "alias/org-key"
TRAIN = {"train": f"s3://{BUCKET}/data/train/", "validation": f"s3://{BUCKET}/data/validation/"}


def _cfg(tmp_path, **overrides):
    """On ml.m5.xlarge (EBS volumes): the SDK adds its configured volume key only where a volume takes one."""
    base = {"region": REGION, "role_arn": ROLE, "bucket": BUCKET, "runs_dir": str(tmp_path), "stream_logs": False}
    return load_config(
        overrides={**base, "train_instance_type": "ml.m5.xlarge", **overrides},
        environ={},
    )


def _org_volume_key(tmp_path, monkeypatch, key: str = ORG_ALIAS) -> None:
    """The SDK's user config file with a volume key for training jobs, as an organisation sets it."""
    path = tmp_path / "sagemaker-config.yaml"
    path.write_text(f"SchemaVersion: '1.0'\nSageMaker:\n  TrainingJob:\n    ResourceConfig:\n      VolumeKmsKeyId: {key}\n")
    monkeypatch.setenv("SAGEMAKER_USER_CONFIG_OVERRIDE", str(path))


def _sent_tuning_job(gate, cfg, *, kinds=("tune",)) -> dict:
    """A tuning job as the SDK sends it (one estimator per kind), captured by the gate; no guard on the way."""
    from sagemaker.tuner import HyperparameterTuner

    session = sdk.session(boto3.Session(region_name=REGION))
    estimators = {
        kind: sdk.estimator(cfg, session, image_uri=pinned_image(), run_id="sent", kind=kind, hyperparameters={"epochs": "1"})
        for kind in kinds
    }
    tuner = sdk.tuner(cfg, estimators[kinds[0]], run_id="sent")
    if len(kinds) == 1:
        tuner.fit(TRAIN, job_name="ic-tune-sent", wait=False)
    else:
        many = HyperparameterTuner.create(
            estimator_dict=estimators,
            objective_metric_name_dict=dict.fromkeys(kinds, tuner.objective_metric_name),
            hyperparameter_ranges_dict=dict.fromkeys(kinds, tuner._hyperparameter_ranges),
            metric_definitions_dict=dict.fromkeys(kinds, tuner.metric_definitions),
            max_jobs=4,
            max_parallel_jobs=2,
        )
        many.fit(inputs=dict.fromkeys(kinds, TRAIN), job_name="ic-tune-many", include_cls_metadata={}, wait=False)
    return gate.calls("CreateHyperParameterTuningJob")[-1]


def test_a_volume_key_alias_from_the_sdk_config_file_reaches_the_tuning_job_and_is_refused_there(gate, tmp_path, monkeypatch):
    _org_volume_key(tmp_path, monkeypatch)
    sent = _sent_tuning_job(gate, _cfg(tmp_path))
    resources = sent["TrainingJobDefinition"]["HyperParameterTuningResourceConfig"]  # the shape SDK v2 sends
    assert "ResourceConfig" not in sent["TrainingJobDefinition"] and resources["VolumeKmsKeyId"] == ORG_ALIAS
    problems = RequestRules().refusals("sagemaker", "CreateHyperParameterTuningJob", sent)
    assert problems == [
        "TrainingJobDefinition.HyperParameterTuningResourceConfig.VolumeKmsKeyId: "
        "'alias/org-key' is not a key id or key ARN (this field takes no alias)"
    ]


@pytest.mark.parametrize("instance_type", ["ml.p3.2xlarge", "ml.p2.xlarge"])
def test_the_never_supported_families_are_refused_on_the_tuning_job_as_sent(gate, tmp_path, instance_type):
    cfg = _cfg(tmp_path).model_copy(update={"train_instance_type": instance_type})  # past the configuration check: the request alone
    sent = _sent_tuning_job(gate, cfg)
    (problem,) = RequestRules().refusals("sagemaker", "CreateHyperParameterTuningJob", sent)
    assert problem.startswith(f"TrainingJobDefinition.HyperParameterTuningResourceConfig.InstanceType: {instance_type} is a ")
    assert "CUDA 13 build has no kernels for it" in problem


def test_each_definition_of_a_multi_definition_tuning_job_is_checked(gate, tmp_path, monkeypatch):
    _org_volume_key(tmp_path, monkeypatch)
    sent = _sent_tuning_job(gate, _cfg(tmp_path), kinds=("tune", "wide"))
    assert "TrainingJobDefinition" not in sent and len(sent["TrainingJobDefinitions"]) == 2
    problems = RequestRules().refusals("sagemaker", "CreateHyperParameterTuningJob", sent)
    assert [p.split(":")[0] for p in problems] == [
        f"TrainingJobDefinitions[{i}].HyperParameterTuningResourceConfig.VolumeKmsKeyId" for i in (0, 1)
    ]


def test_a_legal_tuning_job_as_sent_passes(gate, tmp_path, monkeypatch):
    key_arn = "arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"
    _org_volume_key(tmp_path, monkeypatch, key_arn)
    sent = _sent_tuning_job(gate, _cfg(tmp_path))
    assert sent["TrainingJobDefinition"]["HyperParameterTuningResourceConfig"]["VolumeKmsKeyId"] == key_arn
    assert RequestRules().refusals("sagemaker", "CreateHyperParameterTuningJob", sent) == []


def test_the_pipeline_stops_the_tuning_job_before_sending_it(gate, tmp_path, monkeypatch):
    _org_volume_key(tmp_path, monkeypatch)
    cfg = _cfg(tmp_path)
    RunState(run_id="org", channels={**TRAIN, "test": f"s3://{BUCKET}/data/test/"}).save(cfg.runs_dir)
    with pytest.raises(RequestRefused, match=re.escape("HyperParameterTuningResourceConfig.VolumeKmsKeyId: 'alias/org-key'")):
        pipeline.run(["tune"], pipeline.context(cfg, run_id="org"))
    assert gate.calls("CreateHyperParameterTuningJob") == []
