"""Promote an approved registry version onto an endpoint clients call, guarded; retire such an endpoint.

``promote --endpoint NAME [--version N]`` (default: the newest approved version):

- no endpoint of that name: a new one (the version's model, data capture), owned by the registry
  group (``deploy.ownership``), with the version's alarms;
- an endpoint in service: UpdateEndpoint to a new configuration with the same variant name, blue/green
  with auto-rollback on the version's alarms (``deploy.rollout``). Never DeleteEndpoint, never
  CreateEndpoint for that name. A refused update changes nothing; a rolled-back or failed one leaves the
  previous model serving, and promote says why (the alarms in ALARM, SageMaker's FailureReason) and
  releases what it created. Ctrl-C while SageMaker rolls out leaves the rollout to SageMaker (it finishes
  or rolls back by itself): the endpoint keeps serving, and the configuration and model it uses or is
  moving to are spared by teardown and ``cleanup``, which release them once nothing uses them.
"""

from __future__ import annotations

import re
import time
from collections import Counter
from typing import Any

from botocore.exceptions import ClientError

from deploy import gpu_hosts, ownership, preflight, registry, rollout
from deploy.context import Context, StepError
from deploy.state import Resource
from deploy.steps.hosting import confirm, wait_in_service
from deploy.tags import tag_list
from image_classifier import params

_ENDPOINT_NAME = re.compile(r"^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}$")
BUSY = ("Creating", "Updating", "SystemUpdating", "RollingBack")


def endpoint_argument(ctx: Context, step: str) -> str:
    name = ctx.endpoint_name
    if not name:
        raise StepError(f"{step} needs --endpoint NAME")
    if not _ENDPOINT_NAME.match(name):
        raise StepError(f"--endpoint {name!r}: letters, digits and inner hyphens, at most 63 characters (SageMaker's endpoint names)")
    return name


def describe(sm: Any, endpoint: str) -> dict[str, Any] | None:
    try:
        return sm.describe_endpoint(EndpointName=endpoint)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") == "ValidationException":
            return None
        raise


def _approved(ctx: Context) -> registry.Version:
    group = ctx.cfg.model_registry.group
    if ctx.dry_run:
        number = ctx.version or 1
        return registry.Version(
            number, f"arn:aws:sagemaker:{ctx.cfg.region}:000000000000:model-package/{group}/{number}", "Approved", "", ""
        )
    found = registry.versions(ctx.aws.client("sagemaker"), group)
    version = registry.find(found, ctx.version, approved_only=True)
    if version is None:
        raise StepError(f"group {group} has no approved version: approve one first (python -m deploy.pipeline approve --version N)")
    if version.status != "Approved":
        raise StepError(f"version {version.number} of {group} is {version.status}: promote deploys approved versions only")
    return version


def _capacity(ctx: Context, instance_type: str, count: int) -> None:
    """The pre-flight: the quota must hold ``count`` more instances of the type (blue/green doubles the fleet)."""
    if ctx.dry_run:  # reads are answered with empty shapes: nothing to compare with
        return
    needs: Counter[str] = Counter({f"{instance_type} for endpoint usage": count})
    for finding in preflight.quotas(ctx.aws, ctx.cfg, ["promote"], needs=needs):
        ctx.say(f"event=preflight {finding.line()}")
        if finding.status == "problem":
            raise StepError(f"promotion refused before any change: {finding.detail} ({finding.fix})")


def _model_and_config(ctx: Context, endpoint: str, version: registry.Version, instance_type: str, count: int) -> tuple[str, str]:
    """The version's SageMaker model (from the package, with the metric dimensions) and a configuration for it."""
    sm, cfg = ctx.aws.client("sagemaker"), ctx.cfg
    model, config = ctx.new_name("pmodel"), ctx.new_name("promote")
    tags = tag_list(ctx.state.run_id, cfg.tags)
    ctx.record("model", model)
    request: dict[str, Any] = {
        "ModelName": model,
        "PrimaryContainer": {"ModelPackageName": version.arn, "Environment": rollout.environment(endpoint, version.number)},
        "ExecutionRoleArn": cfg.role_arn,
        "EnableNetworkIsolation": cfg.network_isolation,
        "Tags": tags,
    }
    if cfg.subnets:
        request["VpcConfig"] = {"Subnets": cfg.subnets, "SecurityGroupIds": cfg.security_group_ids}
    sm.create_model(**request)
    variant: dict[str, Any] = {
        "VariantName": rollout.VARIANT,
        "ModelName": model,
        "InstanceType": instance_type,
        "InitialInstanceCount": count,
    }
    if ami := gpu_hosts.inference_ami(instance_type, cfg.inference_ami_version):
        variant["InferenceAmiVersion"] = ami
    config_request: dict[str, Any] = {"EndpointConfigName": config, "ProductionVariants": [variant], "Tags": tags}
    if key := cfg.endpoint_key(instance_type):
        config_request["KmsKeyId"] = key
    if capture := rollout.capture_config(cfg.capture, cfg.s3_root, endpoint, cfg.kms_key_id):
        config_request["DataCaptureConfig"] = capture
    ctx.record("endpoint-config", config)
    sm.create_endpoint_config(**config_request)
    return model, config


def _forget(ctx: Context, *resources: tuple[str, str]) -> None:
    """Now the endpoint's (the registry group's): out of the run's state, so no teardown of the run touches them."""
    gone = set(resources)
    ctx.state.resources = [r for r in ctx.state.resources if (r.kind, r.name) not in gone]
    ctx.save()


def _put_alarms(ctx: Context, endpoint: str, version: int, owner: list[dict[str, str]]) -> list[str]:
    cloudwatch = ctx.aws.client("cloudwatch")
    requests = rollout.alarms(endpoint, version, ctx.cfg.rollout, params.DEFAULT_METRICS_NAMESPACE, tag_list(None, ctx.cfg.tags) + owner)
    for request in requests:
        cloudwatch.put_metric_alarm(**request)
    names = [r["AlarmName"] for r in requests]
    ctx.say(f"event=alarms endpoint={endpoint} version={version} names={','.join(names)}")
    return names


def _drop_alarms(ctx: Context, endpoint: str, keep_version: int | None) -> None:
    """The rollout alarms of ``endpoint`` but those of ``keep_version``."""
    if ctx.dry_run:
        return
    cloudwatch = ctx.aws.client("cloudwatch")
    prefix = f"ic-roll-{endpoint}-v"
    found = [a["AlarmName"] for a in cloudwatch.describe_alarms(AlarmNamePrefix=prefix).get("MetricAlarms", [])]
    keep = set(rollout.alarm_names(endpoint, keep_version).values()) if keep_version is not None else set()
    drop = [name for name in found if name not in keep]
    if drop:
        cloudwatch.delete_alarms(AlarmNames=drop)


def step_promote(ctx: Context) -> None:
    endpoint = endpoint_argument(ctx, "promote")
    confirm(ctx, f"promoting onto {endpoint}")
    sm, cfg = ctx.aws.client("sagemaker"), ctx.cfg
    version = _approved(ctx)
    owner = ownership.owner_tags(cfg.model_registry.group)
    current = describe(sm, endpoint)
    if current is None:
        _create(ctx, endpoint, version, owner)
        return
    status = current.get("EndpointStatus")
    if status not in (None, "InService"):  # None: a dry run's placeholder
        raise StepError(f"endpoint {endpoint} is {status}: promote updates an endpoint in service only (nothing was changed)")
    config = sm.describe_endpoint_config(EndpointConfigName=current["EndpointConfigName"])
    serving = (config.get("ProductionVariants") or [{}])[0]
    instance_type = serving.get("InstanceType", cfg.endpoint_instance_type)
    count = int(serving.get("InitialInstanceCount", cfg.rollout.instance_count))
    _capacity(ctx, instance_type, 2 * count)
    model, new_config = _model_and_config(ctx, endpoint, version, instance_type, count)
    arn = current["EndpointArn"] if not ctx.dry_run else f"arn:aws:sagemaker:{cfg.region}:000000000000:endpoint/{endpoint}"
    sm.add_tags(ResourceArn=arn, Tags=owner)  # the group's from now on: no run's cleanup deletes it
    alarms = _put_alarms(ctx, endpoint, version.number, owner)
    deployment = rollout.deployment_config(count, cfg.rollout, alarms)
    try:
        sm.update_endpoint(EndpointName=endpoint, EndpointConfigName=new_config, DeploymentConfig=deployment)
    except ClientError as exc:
        _drop_alarms(ctx, endpoint, _serving_version(ctx, current))
        raise StepError(f"SageMaker refused the update of {endpoint}; it still serves the previous model: {exc}") from None
    kind = deployment["BlueGreenUpdatePolicy"]["TrafficRoutingConfiguration"]["Type"]
    ctx.say(f"event=rollout_started endpoint={endpoint} version={version.number} config={new_config} traffic={kind} instances={count}")
    if ctx.dry_run:
        return
    status, described = _wait(ctx, endpoint)
    if status == "InService" and described.get("EndpointConfigName") == new_config:
        _forget(ctx, ("model", model), ("endpoint-config", new_config))
        _drop_alarms(ctx, endpoint, version.number)
        ctx.state.results.setdefault("promoted", {})[endpoint] = version.number
        ctx.save()
        ctx.say(f"event=promoted endpoint={endpoint} version={version.number} config={new_config}")
        return
    why = _why(ctx, described, alarms)
    _drop_alarms(ctx, endpoint, _serving_version(ctx, described))
    raise StepError(f"the update of {endpoint} to version {version.number} {why}; it serves the previous model")


def _serving_version(ctx: Context, described: dict[str, Any]) -> int | None:
    """The registry version of the model an endpoint serves (its alarms stay)."""
    sm = ctx.aws.client("sagemaker")
    config = described.get("EndpointConfigName")
    if not config or ctx.dry_run:
        return None
    variants = sm.describe_endpoint_config(EndpointConfigName=config).get("ProductionVariants", [])
    arn = registry.version_of_model(sm, variants[0]["ModelName"]) if variants else None
    return int(arn.rsplit("/", 1)[-1]) if arn and arn.rsplit("/", 1)[-1].isdigit() else None


def _why(ctx: Context, described: dict[str, Any], alarms: list[str]) -> str:
    firing = [
        a["AlarmName"]
        for a in ctx.aws.client("cloudwatch").describe_alarms(AlarmNames=alarms).get("MetricAlarms", [])
        if a.get("StateValue") == "ALARM"
    ]
    reason = described.get("FailureReason")
    if firing:
        return f"was rolled back: alarm {', '.join(firing)} in ALARM" + (f" ({reason})" if reason else "")
    return f"did not complete ({described.get('EndpointStatus')}): {reason or 'no reason given'}"


def _wait(ctx: Context, endpoint: str) -> tuple[str, dict[str, Any]]:
    """Until the endpoint leaves Updating/RollingBack, every ``rollout.poll_s``; each status change said once."""
    sm, said = ctx.aws.client("sagemaker"), ""
    while True:
        described = sm.describe_endpoint(EndpointName=endpoint)
        status = described["EndpointStatus"]
        if status != said:
            ctx.say(f"event=rollout_status endpoint={endpoint} status={status}")
            said = status
        if status not in BUSY:
            return status, described
        time.sleep(ctx.cfg.rollout.poll_s)


def _create(ctx: Context, endpoint: str, version: registry.Version, owner: list[dict[str, str]]) -> None:
    """A new endpoint: the run's until it serves (a failed creation is released with the run), then the group's."""
    sm, cfg = ctx.aws.client("sagemaker"), ctx.cfg
    count = cfg.rollout.instance_count
    _capacity(ctx, cfg.endpoint_instance_type, count)
    model, config = _model_and_config(ctx, endpoint, version, cfg.endpoint_instance_type, count)
    ctx.record("endpoint", endpoint)
    sm.create_endpoint(EndpointName=endpoint, EndpointConfigName=config, Tags=tag_list(None, cfg.tags) + owner)
    wait_in_service(ctx, endpoint)
    _forget(ctx, ("endpoint", endpoint), ("model", model), ("endpoint-config", config))
    _put_alarms(ctx, endpoint, version.number, owner)
    ctx.state.results.setdefault("promoted", {})[endpoint] = version.number
    ctx.save()
    ctx.say(f"event=promoted endpoint={endpoint} version={version.number} config={config} created=true")


def step_retire(ctx: Context) -> None:
    """A promoted endpoint, its configurations, models and alarms: deleted (the registry versions stay)."""
    endpoint = endpoint_argument(ctx, "retire")
    confirm(ctx, f"retiring {endpoint}")
    sm = ctx.aws.client("sagemaker")
    described = describe(sm, endpoint)
    if described is None:
        raise StepError(f"there is no endpoint {endpoint}")
    if not ctx.dry_run:
        tags = {t["Key"]: t["Value"] for t in sm.list_tags(ResourceArn=described["EndpointArn"]).get("Tags", [])}
        if not ownership.owned(tags):
            raise StepError(f"{endpoint} was not promoted (no {ownership.OWNER_KEY} tag): cleanup deletes a run's endpoints")
    resources = [Resource(kind="endpoint", name=endpoint)]
    for config in ownership.configs_of(described):
        resources.append(Resource(kind="endpoint-config", name=config))
        if not ctx.dry_run:
            variants = sm.describe_endpoint_config(EndpointConfigName=config).get("ProductionVariants", [])
            resources += [Resource(kind="model", name=v["ModelName"]) for v in variants]
    if not ctx.dry_run:
        alarms = ctx.aws.client("cloudwatch").describe_alarms(AlarmNamePrefix=f"ic-roll-{endpoint}-v").get("MetricAlarms", [])
        resources += [Resource(kind="alarm", name=a["AlarmName"]) for a in alarms]
    else:
        sm.delete_endpoint(EndpointName=endpoint)  # what a real retire sends first (teardown sends nothing in a dry run)
    outcomes = ctx.release(resources, keep_hosting=False, reason="retire")
    ctx.state.results.get("promoted", {}).pop(endpoint, None)
    ctx.save()
    ctx.say(f"event=retired endpoint={endpoint} released={sum(o.action == 'deleted' for o in outcomes)}")
    if any(o.action == "failed" for o in outcomes):
        raise StepError("retire could not release everything: see the event=still_billing lines")
