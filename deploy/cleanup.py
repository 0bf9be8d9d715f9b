"""Stop and delete what this tool created, found by tag, and nothing else.

For what a process was interrupted in (SIGKILL, a lost laptop) or kept with ``--keep-endpoint``:
running tuning, training, transform and processing jobs are stopped; endpoints, endpoint
configs and models are deleted, and with them the autoscaling targets (and their policies) and the
CloudWatch alarms of the run (``find_scaling``). A resource is ours when it carries ``project=image-classifier``;
with a run id, only that run's (``deploy.tags``). Untagged resources and other projects' are
never touched, whatever their names; nor are a promoted endpoint and its alarms, which the registry
group owns (``deploy.ownership``: ``retire`` deletes them), nor the configuration and model an endpoint uses.
"""

from __future__ import annotations

import logging
from typing import Any

from deploy import results
from deploy.ownership import owned
from deploy.state import Resource
from deploy.tags import ours
from deploy.teardown import SCALABLE_DIMENSION

log = logging.getLogger(__name__)

# kind -> (list call, result key, arn key, name key, extra list arguments)
_LISTINGS: dict[str, tuple[str, str, str, str, dict[str, str]]] = {
    "hyper-parameter-tuning-job": (
        "list_hyper_parameter_tuning_jobs",
        "HyperParameterTuningJobSummaries",
        "HyperParameterTuningJobArn",
        "HyperParameterTuningJobName",
        {"StatusEquals": "InProgress"},
    ),
    "training-job": ("list_training_jobs", "TrainingJobSummaries", "TrainingJobArn", "TrainingJobName", {"StatusEquals": "InProgress"}),
    "transform-job": (
        "list_transform_jobs",
        "TransformJobSummaries",
        "TransformJobArn",
        "TransformJobName",
        {"StatusEquals": "InProgress"},
    ),
    "processing-job": (
        "list_processing_jobs",
        "ProcessingJobSummaries",
        "ProcessingJobArn",
        "ProcessingJobName",
        {"StatusEquals": "InProgress"},
    ),
    "endpoint": ("list_endpoints", "Endpoints", "EndpointArn", "EndpointName", {}),
    "endpoint-config": ("list_endpoint_configs", "EndpointConfigs", "EndpointConfigArn", "EndpointConfigName", {}),
    "model": ("list_models", "Models", "ModelArn", "ModelName", {}),
}


def _tags(sm: Any, arn: str) -> dict[str, str]:
    tags: dict[str, str] = {}
    for page in sm.get_paginator("list_tags").paginate(ResourceArn=arn):
        tags.update({t["Key"]: t["Value"] for t in page.get("Tags", [])})
    return tags


def find(sm: Any, run_id: str | None) -> list[Resource]:
    """Running jobs, endpoints, configs and models tagged by this project (and run, when given)."""
    found = []
    for kind, (list_call, key, arn_key, name_key, arguments) in _LISTINGS.items():
        for page in sm.get_paginator(list_call).paginate(**arguments):
            for item in page.get(key, []):
                tags = _tags(sm, item[arn_key])
                if ours(tags, run_id) and not owned(tags):
                    found.append(Resource(kind=kind, name=item[name_key]))
    log.info("event=cleanup_found run_id=%s resources=%d", run_id or "all", len(found))
    return found


def find_scaling(autoscaling: Any, cloudwatch: Any, run_id: str | None) -> list[Resource]:
    """Autoscaling targets of SageMaker variants and CloudWatch alarms (``ic-*``) tagged by this project (and run)."""
    found = []
    pages = autoscaling.get_paginator("describe_scalable_targets").paginate(ServiceNamespace="sagemaker")
    for page in pages:
        for target in page.get("ScalableTargets", []):
            if target.get("ScalableDimension") != SCALABLE_DIMENSION:
                continue
            tags = autoscaling.list_tags_for_resource(ResourceARN=target["ScalableTargetARN"]).get("Tags", {})
            if ours(tags, run_id):
                found.append(Resource(kind="scalable-target", name=target["ResourceId"]))
    for page in cloudwatch.get_paginator("describe_alarms").paginate(AlarmNamePrefix="ic-"):
        for alarm in page.get("MetricAlarms", []):
            tags = cloudwatch.list_tags_for_resource(ResourceARN=alarm["AlarmArn"]).get("Tags", [])
            tags_of = {t["Key"]: t["Value"] for t in tags}
            if ours(tags_of, run_id) and not owned(tags_of):
                found.append(Resource(kind="alarm", name=alarm["AlarmName"]))
    log.info("event=cleanup_found_scaling run_id=%s resources=%d", run_id or "all", len(found))
    return found


# what a run leaves under <prefix>/runs/<run>/ that is neither a result nor a model: the async step's
# request and answer objects (the answer is kept in the run's state.json) and Clarify's copies of test images
SCRATCH = ("async-input", "async", "clarify-input")


def scratch_keys(s3: Any, bucket: str, prefix: str, run_id: str | None) -> list[str]:
    """The run's (or, without ``run_id``, every run's) objects in the ``SCRATCH`` folders."""
    runs = f"{prefix}/runs/"
    keys = results.list_keys(s3, f"s3://{bucket}/{runs}{run_id + '/' if run_id else ''}")
    return [key for key in keys if len(parts := key[len(runs) :].split("/")) > 2 and parts[1] in SCRATCH]


def delete_keys(s3: Any, bucket: str, keys: list[str]) -> None:
    for start in range(0, len(keys), 1000):  # DeleteObjects takes 1000 keys a request
        s3.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": k} for k in keys[start : start + 1000]], "Quiet": True})
