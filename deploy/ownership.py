"""Who owns a promoted endpoint: the registry group, not the run that happened to promote onto it.

A run's resources carry ``run-id`` (``deploy.tags``) and go with the run (teardown, ``cleanup``). An
endpoint that ``promote`` creates or takes over carries ``owned-by=model-registry:<group>`` instead:
``cleanup`` and ``cleanup --all-runs`` never delete it, nor its rollback alarms; only
``retire --endpoint NAME`` does. The model and endpoint configuration a rollout creates belong to the
run until they serve: whatever an endpoint uses (its configuration, or the one it is rolling out to,
and their models) is never released by teardown or ``cleanup``.
"""

from __future__ import annotations

from typing import Any

from botocore.exceptions import ClientError

from deploy.state import Resource

OWNER_KEY = "owned-by"
OWNER_PREFIX = "model-registry:"
PROMOTE_KINDS = ("promote", "pmodel")  # name kinds of a rollout's endpoint config and model (ic-<kind>-<run>-<n>)


def owner_tags(group: str) -> list[dict[str, str]]:
    return [{"Key": OWNER_KEY, "Value": OWNER_PREFIX + group}]


def owned(tags: dict[str, str]) -> bool:
    """Owned by a registry group: out of every run's reach."""
    return tags.get(OWNER_KEY, "").startswith(OWNER_PREFIX)


def is_rollout_resource(resource: Resource) -> bool:
    """A configuration or model a rollout created: it may be serving, so teardown asks ``in_use`` first."""
    return resource.kind in ("endpoint-config", "model") and resource.name.startswith(tuple(f"ic-{k}-" for k in PROMOTE_KINDS))


def configs_of(described: dict[str, Any]) -> list[str]:
    """The configuration an endpoint serves and the one it is being updated to (``PendingDeploymentSummary``)."""
    names = [described.get("EndpointConfigName")]
    names.append((described.get("PendingDeploymentSummary") or {}).get("EndpointConfigName"))
    return [n for n in names if n]


def in_use(sm: Any) -> set[tuple[str, str]]:
    """(kind, name) of every endpoint configuration an endpoint of the account uses, and of their models."""
    used: set[tuple[str, str]] = set()
    for page in sm.get_paginator("list_endpoints").paginate():
        for item in page.get("Endpoints", []):
            try:
                described = sm.describe_endpoint(EndpointName=item["EndpointName"])
            except ClientError:
                continue  # deleted meanwhile
            if described.get("EndpointStatus") == "Deleting":
                continue
            for config in configs_of(described):
                used.add(("endpoint-config", config))
                try:
                    variants = sm.describe_endpoint_config(EndpointConfigName=config).get("ProductionVariants", [])
                except ClientError:
                    continue
                used.update(("model", v["ModelName"]) for v in variants if v.get("ModelName"))
    return used
