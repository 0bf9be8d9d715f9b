"""Autoscaling of endpoints through Application Auto Scaling, and the alarm that wakes an async endpoint at zero.

- Real-time: target tracking on ``SageMakerVariantInvocationsPerInstance`` between ``autoscaling.min_instances``
  and ``max_instances``.
- Asynchronous: target tracking on ``ApproximateBacklogSizePerInstance`` (requests queued per instance)
  between ``async_inference.min_instances`` (0: scale to zero when idle) and ``max_instances``. Target
  tracking cannot leave zero (a backlog per instance of zero instances is undefined), so, as AWS's guide
  to async autoscaling does, a step policy adds one instance when ``HasBacklogWithoutCapacity`` is 1, fired
  by a CloudWatch alarm on that metric that this module creates.

Each target and alarm is written to the run's state before it is created and carries the run's tags;
teardown deletes the alarm, the policies and the target before the endpoint (``deploy.teardown``).
"""

from __future__ import annotations

from deploy.context import Context
from deploy.tags import tag_list
from deploy.teardown import SCALABLE_DIMENSION

NAMESPACE = "sagemaker"
VARIANT = "AllTraffic"  # the SDK's variant name
METRICS_NAMESPACE = "AWS/SageMaker"


def resource_id(endpoint: str, variant: str = VARIANT) -> str:
    return f"endpoint/{endpoint}/variant/{variant}"


def _where(endpoint: str) -> dict[str, str]:
    return {"ServiceNamespace": NAMESPACE, "ResourceId": resource_id(endpoint), "ScalableDimension": SCALABLE_DIMENSION}


def _register(ctx: Context, endpoint: str, low: int, high: int) -> None:
    ctx.record("scalable-target", resource_id(endpoint))
    tags = {t["Key"]: t["Value"] for t in tag_list(ctx.state.run_id, ctx.cfg.tags)}
    ctx.aws.client("application-autoscaling").register_scalable_target(**_where(endpoint), MinCapacity=low, MaxCapacity=high, Tags=tags)


def _policy(ctx: Context, endpoint: str, name: str, **config) -> str:
    answer = ctx.aws.client("application-autoscaling").put_scaling_policy(PolicyName=name, **_where(endpoint), **config)
    ctx.state.scaling.setdefault(endpoint, []).append(name)
    ctx.save()
    return answer.get("PolicyARN", "")


def scale_real_time(ctx: Context, endpoint: str) -> None:
    """Target tracking on invocations per instance (nothing when ``autoscaling.max_instances`` = ``min_instances``)."""
    options = ctx.cfg.autoscaling
    if not options.enabled:
        return
    _register(ctx, endpoint, options.min_instances, options.max_instances)
    _policy(
        ctx,
        endpoint,
        f"{endpoint}-invocations",
        PolicyType="TargetTrackingScaling",
        TargetTrackingScalingPolicyConfiguration={
            "TargetValue": options.invocations_per_instance,
            "PredefinedMetricSpecification": {"PredefinedMetricType": "SageMakerVariantInvocationsPerInstance"},
            "ScaleInCooldown": options.scale_in_cooldown_s,
            "ScaleOutCooldown": options.scale_out_cooldown_s,
        },
    )
    ctx.say(
        f"event=autoscaling endpoint={endpoint} min={options.min_instances} max={options.max_instances} "
        f"metric=SageMakerVariantInvocationsPerInstance target={options.invocations_per_instance}"
    )


def scale_async(ctx: Context, endpoint: str) -> None:
    """Backlog per instance tracked; from zero, one instance added when requests wait with none to take them."""
    options = ctx.cfg.async_inference
    _register(ctx, endpoint, options.min_instances, options.max_instances)
    dimensions = [{"Name": "EndpointName", "Value": endpoint}]
    _policy(
        ctx,
        endpoint,
        f"{endpoint}-backlog",
        PolicyType="TargetTrackingScaling",
        TargetTrackingScalingPolicyConfiguration={
            "TargetValue": options.backlog_per_instance,
            "CustomizedMetricSpecification": {
                "MetricName": "ApproximateBacklogSizePerInstance",
                "Namespace": METRICS_NAMESPACE,
                "Dimensions": dimensions,
                "Statistic": "Average",
            },
            "ScaleInCooldown": options.scale_in_cooldown_s,
            "ScaleOutCooldown": options.scale_out_cooldown_s,
        },
    )
    if options.min_instances > 0:
        ctx.say(
            f"event=autoscaling endpoint={endpoint} min={options.min_instances} max={options.max_instances} metric=ApproximateBacklogSizePerInstance"
        )
        return
    arn = _policy(
        ctx,
        endpoint,
        f"{endpoint}-from-zero",
        PolicyType="StepScaling",
        StepScalingPolicyConfiguration={
            "AdjustmentType": "ChangeInCapacity",
            "MetricAggregationType": "Average",
            "Cooldown": options.scale_out_cooldown_s,
            "StepAdjustments": [{"MetricIntervalLowerBound": 0.0, "ScalingAdjustment": 1}],
        },
    )
    alarm = f"{endpoint}-backlog-without-capacity"
    ctx.record("alarm", alarm)
    ctx.aws.client("cloudwatch").put_metric_alarm(
        AlarmName=alarm,
        AlarmDescription=f"requests wait for {endpoint} and it has no instance: add one (image-classifier)",
        MetricName="HasBacklogWithoutCapacity",
        Namespace=METRICS_NAMESPACE,
        Statistic="Average",
        Dimensions=dimensions,
        Period=60,
        EvaluationPeriods=2,
        DatapointsToAlarm=2,
        Threshold=1.0,
        ComparisonOperator="GreaterThanOrEqualToThreshold",
        TreatMissingData="missing",
        AlarmActions=[arn],
        Tags=tag_list(ctx.state.run_id, ctx.cfg.tags),
    )
    ctx.say(
        f"event=autoscaling endpoint={endpoint} min=0 max={options.max_instances} metric=ApproximateBacklogSizePerInstance "
        f"target={options.backlog_per_instance} from_zero=HasBacklogWithoutCapacity alarm={alarm}"
    )
