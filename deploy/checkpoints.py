"""Checkpoint folders in S3: one per training job, removed once the job has ended.

SageMaker downloads everything under a job's ``CheckpointConfig.S3Uri`` into
``/opt/ml/checkpoints`` when the job starts (and again when a Spot job restarts), and every
trial of a tuning job is given the same URI. So the trainer writes under
``checkpoints/<TRAINING_JOB_NAME>/`` and empties that folder when the job succeeds; SageMaker
mirrors a deletion in the container to S3 ("If a checkpoint is deleted in the SageMaker AI
container, it will also be deleted in the S3 folder": developer guide, "Checkpoints in Amazon
SageMaker AI"). A job that ended otherwise (stopped by early stopping, failed) leaves its
folder, which nothing can resume (a new job has a new name): ``prune`` deletes the folders of
ended jobs, while a tuning job runs and when it ends, so a trial starting late downloads only
the folders of the trials still running.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from deploy import results

ENDED = ("Completed", "Failed", "Stopped")


def job_folders(s3: Any, uri: str, depth: int = 0) -> dict[str, list[dict[str, Any]]]:
    """Job name -> the objects under ``<uri>/<depth folders>/<job name>/`` (depth 1: a run's, 2: every run's)."""
    bucket, prefix = results.split_s3(uri.rstrip("/") + "/")
    folders: dict[str, list[dict[str, Any]]] = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for item in page.get("Contents", []):
            parts = item["Key"][len(prefix) :].split("/")
            if len(parts) > depth + 1:
                folders.setdefault(parts[depth], []).append(item)
    return folders


def _status(sm: Any, job: str) -> str | None:
    try:
        return sm.describe_training_job(TrainingJobName=job)["TrainingJobStatus"]
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") == "ValidationException":  # no such job: not ours to judge
            return None
        raise


def prune(s3: Any, sm: Any, uri: str, say: Callable[[str], None], depth: int = 0) -> int:
    """Delete the folders under ``uri`` of jobs that have ended; returns the bytes removed.

    Never fails the step: storage left behind must not stop a tuning job (nor tear it down).
    """
    try:
        return _prune(s3, sm, uri, say, depth)
    except (ClientError, BotoCoreError) as exc:
        code = exc.response.get("Error", {}).get("Code") if isinstance(exc, ClientError) else type(exc).__name__
        say(f"event=checkpoints_prune_failed uri={uri} error={code} action=continue")
        return 0


def _prune(s3: Any, sm: Any, uri: str, say: Callable[[str], None], depth: int) -> int:
    bucket, _ = results.split_s3(uri)
    removed = 0
    for job, objects in sorted(job_folders(s3, uri, depth).items()):
        status = _status(sm, job)
        if status not in ENDED:
            continue
        for start in range(0, len(objects), 1000):  # DeleteObjects takes 1000 keys a request
            batch = [{"Key": o["Key"]} for o in objects[start : start + 1000]]
            s3.delete_objects(Bucket=bucket, Delete={"Objects": batch, "Quiet": True})
        size = sum(o["Size"] for o in objects)
        removed += size
        say(f"event=checkpoints_pruned job={job} status={status} files={len(objects)} bytes={size}")
    return removed
