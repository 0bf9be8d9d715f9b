"""SageMaker's rules on a guarded rollout and on data capture that the service model cannot state.

Run by ``deploy.rules.RequestRules`` on every request, like the other cross-field rules:

- UpdateEndpoint's blue/green policy: a canary or linear shift needs the routing's size (and no other),
  at least 2 instances in the variant, and a size of at most half of them (50 % of the capacity);
  all-at-once takes no size; the deployment's timeout must exceed its waits (bake plus termination wait).
  The alarm count (1-10) and each bound in seconds are the service model's, checked beside these.
- DataCaptureConfig: the destination is an ``s3://`` URI, each capture mode at most once.

The instance count of a configuration is remembered from its CreateEndpointConfig in the same session;
an update to a configuration created elsewhere is checked without it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

SIZED = {"CANARY": "CanarySize", "LINEAR": "LinearStepSize"}


@dataclass
class RolloutRules:
    instances: dict[str, int] = field(default_factory=dict)  # endpoint config -> instances of its first variant

    def refusals(self, operation: str, params: dict[str, Any]) -> list[str]:
        if operation == "CreateEndpointConfig":
            return self._config(params)
        if operation == "UpdateEndpoint":
            return self._update(params)
        return []

    def _config(self, params: dict[str, Any]) -> list[str]:
        variants = params.get("ProductionVariants") or [{}]
        if "InitialInstanceCount" in variants[0]:
            self.instances[params.get("EndpointConfigName", "")] = int(variants[0]["InitialInstanceCount"])
        capture = params.get("DataCaptureConfig")
        if not capture:
            return []
        problems = []
        destination = capture.get("DestinationS3Uri", "")
        if not destination.startswith("s3://"):
            problems.append(f"DataCaptureConfig.DestinationS3Uri: {destination!r} is not an s3:// URI")
        modes = [o.get("CaptureMode") for o in capture.get("CaptureOptions", [])]
        if len(modes) != len(set(modes)):
            problems.append(f"DataCaptureConfig.CaptureOptions: each capture mode once, got {modes}")
        return problems

    def _update(self, params: dict[str, Any]) -> list[str]:
        policy = (params.get("DeploymentConfig") or {}).get("BlueGreenUpdatePolicy")
        if not policy:
            return []
        where = "DeploymentConfig.BlueGreenUpdatePolicy"
        routing = policy.get("TrafficRoutingConfiguration", {})
        kind, problems = routing.get("Type"), []
        count = self.instances.get(params.get("EndpointConfigName", ""))
        for other_kind, key in SIZED.items():
            if key in routing and kind != other_kind:
                problems.append(f"{where}.TrafficRoutingConfiguration.{key}: only a {other_kind} shift takes it (this one is {kind})")
        if kind in SIZED:
            size = routing.get(SIZED[kind])
            if size is None:
                problems.append(f"{where}.TrafficRoutingConfiguration.{SIZED[kind]}: a {kind} shift needs it")
            if count is not None and count < 2:
                problems.append(
                    f"{where}.TrafficRoutingConfiguration.Type: a {kind} shift needs at least 2 instances (the variant has {count}): "
                    "use ALL_AT_ONCE with a bake (TerminationWaitInSeconds)"
                )
            if size is not None:
                problems += _half(f"{where}.TrafficRoutingConfiguration.{SIZED[kind]}", size, count)
        waits = int(routing.get("WaitIntervalInSeconds", 0)) + int(policy.get("TerminationWaitInSeconds", 0))
        timeout = policy.get("MaximumExecutionTimeoutInSeconds")
        if timeout is not None and int(timeout) <= waits:
            problems.append(
                f"{where}.MaximumExecutionTimeoutInSeconds: {timeout} must exceed WaitIntervalInSeconds + TerminationWaitInSeconds ({waits})"
            )
        return problems


def _half(where: str, size: dict[str, Any], count: int | None) -> list[str]:
    """A canary or linear step is at most half of the fleet."""
    value = int(size.get("Value", 0))
    if size.get("Type") == "CAPACITY_PERCENT" and value > 50:
        return [f"{where}: {value} % of the capacity; at most 50 %"]
    if size.get("Type") == "INSTANCE_COUNT" and count is not None and value > count // 2:
        return [f"{where}: {value} instances of {count}; at most half of the fleet ({count // 2})"]
    return []
