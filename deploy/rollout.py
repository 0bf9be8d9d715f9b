"""What ``promote`` asks SageMaker for: the blue/green deployment, its rollback alarms, and data capture.

- Deployment (``deployment_config``): blue/green. With at least 2 instances a canary: ``canary_percent``
  of the fleet (SageMaker: at most half) takes traffic for ``bake_s``, then the rest; with 1 instance
  all at once, then ``bake_s`` with both fleets up. Either way the old fleet stays until the bake ends
  without an alarm, and SageMaker rolls back when one of the alarms goes to ALARM.
- Alarms (``alarms``): from the container's EMF metrics of the new version only (dimensions Endpoint
  and ModelVersion, set through the model's environment): ``ServerErrors`` (5xx) and ``Latency`` p99;
  and SageMaker's ``Invocation5XXErrors`` of the variant. Missing data is not breaching (a canary
  without traffic must not roll back); the bake is longer than the metrics' ingestion delay
  (``deploy.day_two_options``).
- Capture (``capture_config``): request and answer bodies, a share of requests, under
  ``<s3 root>/capture/<endpoint>/`` with the run's KMS key.
"""

from __future__ import annotations

from typing import Any

from deploy.day_two_options import CaptureOptions, RolloutOptions
from image_classifier import params

SAGEMAKER_NAMESPACE = "AWS/SageMaker"
VARIANT = "AllTraffic"


def alarm_names(endpoint: str, version: int) -> dict[str, str]:
    stem = f"ic-roll-{endpoint}-v{version}"
    return {"errors": f"{stem}-errors", "latency": f"{stem}-p99-latency", "invocation_errors": f"{stem}-invocation-5xx"}


def alarms(endpoint: str, version: int, options: RolloutOptions, namespace: str, tags: list[dict[str, str]]) -> list[dict[str, Any]]:
    """The PutMetricAlarm requests of a rollout: the new version's errors and p99 latency, and SageMaker's 5xx."""
    names = alarm_names(endpoint, version)
    ours = [{"Name": params.ENDPOINT_DIMENSION, "Value": endpoint}, {"Name": params.MODEL_VERSION_DIMENSION, "Value": str(version)}]
    common = {
        "Period": options.alarm_period_s,
        "EvaluationPeriods": options.evaluation_periods,
        "DatapointsToAlarm": options.evaluation_periods,
        "ComparisonOperator": "GreaterThanOrEqualToThreshold",
        "TreatMissingData": "notBreaching",
        "Tags": tags,
    }
    return [
        {
            "AlarmName": names["errors"],
            "AlarmDescription": f"5xx answers of model version {version} on {endpoint}: rolls the update back (image-classifier)",
            "Namespace": namespace,
            "MetricName": params.SERVER_ERRORS_METRIC,
            "Dimensions": ours,
            "Statistic": "Sum",
            "Threshold": options.error_threshold,
            **common,
        },
        {
            "AlarmName": names["latency"],
            "AlarmDescription": f"p99 latency of model version {version} on {endpoint}: rolls the update back (image-classifier)",
            "Namespace": namespace,
            "MetricName": "Latency",
            "Dimensions": ours,
            "ExtendedStatistic": "p99",
            "Threshold": options.p99_latency_ms,
            **common,
        },
        {
            "AlarmName": names["invocation_errors"],
            "AlarmDescription": f"SageMaker's 5xx on {endpoint} during the rollout of version {version} (image-classifier)",
            "Namespace": SAGEMAKER_NAMESPACE,
            "MetricName": "Invocation5XXErrors",
            "Dimensions": [{"Name": "EndpointName", "Value": endpoint}, {"Name": "VariantName", "Value": VARIANT}],
            "Statistic": "Sum",
            "Threshold": options.error_threshold,
            **common,
        },
    ]


def deployment_config(instance_count: int, options: RolloutOptions, alarm_list: list[str]) -> dict[str, Any]:
    """Canary with >= 2 instances (SageMaker refuses a canary on one), all at once otherwise; auto-rollback on the alarms."""
    if instance_count >= 2:
        routing: dict[str, Any] = {
            "Type": "CANARY",
            "CanarySize": {"Type": "CAPACITY_PERCENT", "Value": options.canary_percent},
            "WaitIntervalInSeconds": options.bake_s,
        }
        termination_wait = 0
    else:
        routing = {"Type": "ALL_AT_ONCE", "WaitIntervalInSeconds": 0}
        termination_wait = options.bake_s  # both fleets up, the old one idle, while the alarms watch
    return {
        "BlueGreenUpdatePolicy": {
            "TrafficRoutingConfiguration": routing,
            "TerminationWaitInSeconds": termination_wait,
            "MaximumExecutionTimeoutInSeconds": options.max_execution_s,
        },
        "AutoRollbackConfiguration": {"Alarms": [{"AlarmName": name} for name in alarm_list]},
    }


def capture_prefix(s3_root: str, endpoint: str) -> str:
    return f"{s3_root}/capture/{endpoint}"


def capture_config(options: CaptureOptions, s3_root: str, endpoint: str, kms_key_id: str | None) -> dict[str, Any] | None:
    """DataCaptureConfig (None when off): images arrive base64 in JSON Lines under ``capture_prefix``."""
    if not options.enabled:
        return None
    config: dict[str, Any] = {
        "EnableCapture": True,
        "InitialSamplingPercentage": options.sampling_percent,
        "DestinationS3Uri": capture_prefix(s3_root, endpoint),
        "CaptureOptions": [{"CaptureMode": "Input"}, {"CaptureMode": "Output"}],
        "CaptureContentTypeHeader": {"JsonContentTypes": ["application/json"]},
    }
    if kms_key_id:
        config["KmsKeyId"] = kms_key_id
    return config


def environment(endpoint: str, version: int) -> dict[str, str]:
    """The model's environment: the dimensions of its EMF lines."""
    return {params.ENDPOINT_ENV: endpoint, params.MODEL_VERSION_ENV: str(version)}
