"""The tags every resource of a run carries: how cleanup and teardown recognise what is ours.

A resource is ours when it carries ``project=image-classifier``; it belongs to a run when it
also carries ``run-id=<run>``. Untagged resources and other projects' are never touched,
whatever their names.
"""

from __future__ import annotations

PROJECT_TAG = "image-classifier"
TAG_PROJECT_KEY = "project"
TAG_RUN_KEY = "run-id"


def tag_list(run_id: str | None, extra: dict[str, str] | None = None) -> list[dict[str, str]]:
    """``project`` and ``run-id`` (when given) first, then the config's extra tags."""
    tags = {TAG_PROJECT_KEY: PROJECT_TAG, **({TAG_RUN_KEY: run_id} if run_id else {}), **(extra or {})}
    return [{"Key": k, "Value": v} for k, v in tags.items()]


def ours(tags: dict[str, str], run_id: str | None) -> bool:
    """Tagged by this project and, with a run id, by that run."""
    return tags.get(TAG_PROJECT_KEY) == PROJECT_TAG and (run_id is None or tags.get(TAG_RUN_KEY) == run_id)
