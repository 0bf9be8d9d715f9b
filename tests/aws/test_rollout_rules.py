"""promote's requests as built (deploy.rollout) and SageMaker's rules on them (deploy.rollout_rules): pure, no emulator."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from deploy import rollout, service_model
from deploy.day_two_options import CaptureOptions, RolloutOptions
from deploy.rules import RequestRules

OPTIONS = RolloutOptions()


def _config(rules: RequestRules, name: str, count: int, **extra) -> list[str]:
    variant = {"VariantName": "AllTraffic", "ModelName": "m", "InstanceType": "ml.m5.xlarge", "InitialInstanceCount": count}
    return rules.refusals("sagemaker", "CreateEndpointConfig", {"EndpointConfigName": name, "ProductionVariants": [variant], **extra})


def _update(rules: RequestRules, config: str, deployment: dict) -> list[str]:
    params = {"EndpointName": "prod", "EndpointConfigName": config, "DeploymentConfig": deployment}
    return [str(v) for v in service_model.violations(("sagemaker", "UpdateEndpoint"), params)] + rules.refusals(
        "sagemaker", "UpdateEndpoint", params
    )


def test_the_built_deployment_is_a_canary_from_two_instances_and_passes_every_rule():
    alarms = list(rollout.alarm_names("prod", 3).values())
    for count, kind in ((1, "ALL_AT_ONCE"), (2, "CANARY"), (8, "CANARY")):
        rules = RequestRules()
        assert _config(rules, f"c{count}", count) == []
        deployment = rollout.deployment_config(count, OPTIONS, alarms)
        policy = deployment["BlueGreenUpdatePolicy"]
        assert policy["TrafficRoutingConfiguration"]["Type"] == kind
        bake = policy["TrafficRoutingConfiguration"]["WaitIntervalInSeconds"] + policy["TerminationWaitInSeconds"]
        assert bake == OPTIONS.bake_s  # the canary bakes before the rest moves; all at once bakes with the old fleet kept
        assert _update(rules, f"c{count}", deployment) == []
    for request in rollout.alarms("prod", 3, OPTIONS, "ImageClassifier", []):
        assert request["TreatMissingData"] == "notBreaching" and service_model.violations(("cloudwatch", "PutMetricAlarm"), request) == []


def test_rollouts_sagemaker_refuses_are_refused_with_the_reason():
    rules = RequestRules()
    _config(rules, "one", 1)
    _config(rules, "four", 4)
    alarms = {"AutoRollbackConfiguration": {"Alarms": [{"AlarmName": "a"}]}}

    def canary(size: dict, **policy) -> dict:
        return {
            "BlueGreenUpdatePolicy": {
                "TrafficRoutingConfiguration": {"Type": "CANARY", "CanarySize": size, "WaitIntervalInSeconds": 600},
                **policy,
            },
            **alarms,
        }

    assert any("at least 2 instances" in p for p in _update(rules, "one", canary({"Type": "INSTANCE_COUNT", "Value": 1})))
    assert any("at most half of the fleet (2)" in p for p in _update(rules, "four", canary({"Type": "INSTANCE_COUNT", "Value": 3})))
    assert any("at most 50 %" in p for p in _update(rules, "four", canary({"Type": "CAPACITY_PERCENT", "Value": 60})))
    assert _update(rules, "four", canary({"Type": "INSTANCE_COUNT", "Value": 2})) == []
    too_short = canary({"Type": "INSTANCE_COUNT", "Value": 1}, TerminationWaitInSeconds=300, MaximumExecutionTimeoutInSeconds=900)
    assert any("must exceed WaitIntervalInSeconds + TerminationWaitInSeconds (900)" in p for p in _update(rules, "four", too_short))
    no_size = {"BlueGreenUpdatePolicy": {"TrafficRoutingConfiguration": {"Type": "LINEAR", "WaitIntervalInSeconds": 60}}, **alarms}
    assert any("a LINEAR shift needs it" in p for p in _update(rules, "four", no_size))
    eleven = {"AutoRollbackConfiguration": {"Alarms": [{"AlarmName": f"a{i}"} for i in range(11)]}}
    assert any("at most 10" in p for p in _update(rules, "four", eleven))
    long_bake = canary({"Type": "INSTANCE_COUNT", "Value": 1})
    long_bake["BlueGreenUpdatePolicy"]["TrafficRoutingConfiguration"]["WaitIntervalInSeconds"] = 3601
    assert any("WaitIntervalInSeconds" in p and "3600" in p for p in _update(rules, "four", long_bake))


def test_capture_is_checked_and_off_by_configuration():
    rules = RequestRules()
    capture = rollout.capture_config(CaptureOptions(), "s3://b/p", "prod", "alias/k")
    assert capture is not None and _config(rules, "ok", 1, DataCaptureConfig=capture) == []
    assert capture["DestinationS3Uri"] == "s3://b/p/capture/prod" and capture["KmsKeyId"] == "alias/k"
    bad = {**capture, "DestinationS3Uri": "https://b/p", "CaptureOptions": [{"CaptureMode": "Input"}, {"CaptureMode": "Input"}]}
    problems = _config(rules, "bad", 1, DataCaptureConfig=bad)
    assert any("not an s3:// URI" in p for p in problems) and any("each capture mode once" in p for p in problems)
    over = {"EndpointConfigName": "x", "ProductionVariants": [], "DataCaptureConfig": {**capture, "InitialSamplingPercentage": 101}}
    paths = [v.path for v in service_model.violations(("sagemaker", "CreateEndpointConfig"), over)]
    assert "DataCaptureConfig.InitialSamplingPercentage" in paths
    assert rollout.capture_config(CaptureOptions(enabled=False), "s3://b/p", "prod", None) is None
    with pytest.raises(ValidationError):
        CaptureOptions(sampling_percent=101)


def test_a_bake_shorter_than_the_metrics_delay_is_refused_when_the_configuration_loads():
    with pytest.raises(ValidationError, match="ingestion delay"):
        RolloutOptions(bake_s=120)
    with pytest.raises(ValidationError):
        RolloutOptions(canary_percent=60)
    assert RolloutOptions(bake_s=180).bake_s == 180
