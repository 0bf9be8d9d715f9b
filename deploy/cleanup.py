"""Delete what this tool created (endpoints, endpoint configs, models) and nothing else.

A resource is ours when it carries ``project=image-classifier``; with a run id, only that
run's. Untagged resources and other projects' are never touched, whatever their names.
"""

from __future__ import annotations

import logging
from typing import Any

from deploy.aws import PROJECT_TAG, TAG_PROJECT_KEY, TAG_RUN_KEY

log = logging.getLogger(__name__)

# (list call, result key, arn key, name key, delete call, delete parameter)
_KINDS = (
    ("list_endpoints", "Endpoints", "EndpointArn", "EndpointName", "delete_endpoint", "EndpointName"),
    ("list_endpoint_configs", "EndpointConfigs", "EndpointConfigArn", "EndpointConfigName", "delete_endpoint_config", "EndpointConfigName"),
    ("list_models", "Models", "ModelArn", "ModelName", "delete_model", "ModelName"),
)


def _tags(sm: Any, arn: str) -> dict[str, str]:
    tags: dict[str, str] = {}
    for page in sm.get_paginator("list_tags").paginate(ResourceArn=arn):
        tags.update({t["Key"]: t["Value"] for t in page.get("Tags", [])})
    return tags


def ours(tags: dict[str, str], run_id: str | None) -> bool:
    return tags.get(TAG_PROJECT_KEY) == PROJECT_TAG and (run_id is None or tags.get(TAG_RUN_KEY) == run_id)


def cleanup(sm: Any, run_id: str | None, *, dry_run: bool = False) -> list[tuple[str, str]]:
    """Endpoints first (they hold their configs and models), then configs, then models."""
    deleted = []
    for list_call, key, arn_key, name_key, delete_call, param in _KINDS:
        for page in sm.get_paginator(list_call).paginate():
            for item in page.get(key, []):
                if not ours(_tags(sm, item[arn_key]), run_id):
                    continue
                name = item[name_key]
                log.info("event=cleanup kind=%s name=%s dry_run=%s", key[:-1], name, dry_run)
                if not dry_run:
                    getattr(sm, delete_call)(**{param: name})
                deleted.append((key[:-1], name))
    return deleted
