"""Stop and delete what a run created, so that nothing is left billing.

Used when a step fails, when the run is interrupted (``deploy.signals``), at the end of a run
(its endpoints, unless ``--keep-endpoint``) and by ``cleanup`` on what it finds by tag.

Each kind says how to read its status, which statuses still bill, and how to stop or delete it.
Jobs in progress are stopped (SageMaker completes the stop on its side); then endpoints, their
configs and their models are deleted, in that order. SageMaker refuses to delete an endpoint
while it is being created or updated: teardown waits for it (``teardown_poll_s``, at most
``teardown_wait_s``), then deletes it. What cannot be released is printed with the command
that releases it by hand, and the run exits non-zero.

A kind added later is one entry in ``KINDS``: async and serverless endpoints are endpoints; an
autoscaling target goes before the endpoint it scales.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from deploy import signals
from deploy.state import Resource

_ABSENT_CODES = ("ValidationException", "ResourceNotFound", "ResourceNotFoundException")


@dataclass(frozen=True)
class Kind:
    name: str
    describe: str  # boto3 method of the sagemaker client
    key: str  # its name parameter
    status_key: str | None  # None: the resource has no status, only exists or not
    billing: frozenset[str]  # statuses to release
    busy: frozenset[str]  # statuses in which SageMaker refuses the release: wait, then retry
    release: str  # stop_* or delete_*
    hosting: bool  # deleted at the end of a run unless --keep-endpoint

    def status(self, sm: Any, name: str) -> str | None:
        """The current status; ``"exists"`` for kinds without one; None when it is gone."""
        try:
            answer = getattr(sm, self.describe)(**{self.key: name})
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in _ABSENT_CODES:
                return None
            raise
        return answer.get(self.status_key, "unknown") if self.status_key else "exists"

    def command(self, name: str) -> str:
        """The AWS CLI line that releases it by hand."""
        flag = re.sub(r"(?<!^)(?=[A-Z])", "-", self.key).lower()
        return f"aws sagemaker {self.release.replace('_', '-')} --{flag} {name}"


def _job(name: str, noun: str) -> Kind:
    """``noun``: the API's spelling, e.g. ``TrainingJob`` (DescribeTrainingJob, TrainingJobName, StopTrainingJob)."""
    snake = re.sub(r"(?<!^)(?=[A-Z])", "_", noun).lower()
    return Kind(name, f"describe_{snake}", f"{noun}Name", f"{noun}Status", frozenset({"InProgress"}), frozenset(), f"stop_{snake}", False)


_ENDPOINT_BUSY = frozenset({"Creating", "Updating", "SystemUpdating", "RollingBack"})
_ENDPOINT_STATUSES = frozenset({"OutOfService", "InService", "Failed", "UpdateRollbackFailed"}) | _ENDPOINT_BUSY
_EXISTS = frozenset({"exists"})

KINDS: dict[str, Kind] = {
    kind.name: kind
    for kind in (
        _job("hyper-parameter-tuning-job", "HyperParameterTuningJob"),  # first: stopping it stops its trials
        _job("training-job", "TrainingJob"),
        _job("transform-job", "TransformJob"),
        _job("processing-job", "ProcessingJob"),
        Kind(
            "endpoint", "describe_endpoint", "EndpointName", "EndpointStatus", _ENDPOINT_STATUSES, _ENDPOINT_BUSY, "delete_endpoint", True
        ),
        Kind(
            "endpoint-config", "describe_endpoint_config", "EndpointConfigName", None, _EXISTS, frozenset(), "delete_endpoint_config", True
        ),
        Kind("model", "describe_model", "ModelName", None, _EXISTS, frozenset(), "delete_model", True),
    )
}
ORDER = list(KINDS)


@dataclass(frozen=True)
class Outcome:
    resource: Resource
    action: str  # stopped | deleted | kept | absent | finished | failed
    detail: str = ""

    def line(self) -> str:
        detail = f" detail={self.detail!r}" if self.detail else ""
        return f"event=teardown kind={self.resource.kind} name={self.resource.name} action={self.action}{detail}"


@dataclass(frozen=True)
class Waiting:
    poll_s: float
    wait_s: float


def _release(sm: Any, kind: Kind, name: str, waiting: Waiting, say: Callable[[str], None]) -> tuple[str, str]:
    status = kind.status(sm, name)
    if status is None:
        return "absent", ""
    if status not in kind.billing:
        return "finished", status
    deadline = time.monotonic() + waiting.wait_s
    while True:
        try:
            getattr(sm, kind.release)(**{kind.key: name})
            return ("stopped" if kind.release.startswith("stop") else "deleted"), status
        except ClientError as exc:
            status = kind.status(sm, name)
            if status is None:
                return "absent", ""
            if status not in kind.busy or time.monotonic() > deadline:
                raise
            say(f"event=teardown_waiting kind={kind.name} name={name} status={status} reason={exc.response['Error'].get('Message', '')!r}")
            time.sleep(waiting.poll_s)


def _ordered(resources: Iterable[Resource]) -> list[Resource]:
    unique = list(dict.fromkeys((r.kind, r.name) for r in resources))
    return [Resource(kind=k, name=n) for k, n in sorted(unique, key=lambda item: ORDER.index(item[0]))]


def release(sm: Any, resources: Iterable[Resource], *, keep_hosting: bool, waiting: Waiting, say: Callable[[str], None]) -> list[Outcome]:
    """Release ``resources`` (jobs first, then endpoints, configs, models); every outcome is said as it happens."""
    outcomes = []
    with signals.deferred(say):
        for resource in _ordered(resources):
            kind = KINDS[resource.kind]
            if kind.hosting and keep_hosting:
                outcome = Outcome(resource, "kept")
            else:
                try:
                    outcome = Outcome(resource, *_release(sm, kind, resource.name, waiting, say))
                except ClientError as exc:
                    outcome = Outcome(resource, "failed", exc.response.get("Error", {}).get("Message", str(exc)))
                except BotoCoreError as exc:  # no answer at all (network, credentials): the next resource may still go
                    outcome = Outcome(resource, "failed", str(exc))
            say(outcome.line())
            outcomes.append(outcome)
    return outcomes


def summary(outcomes: list[Outcome], reason: str) -> list[str]:
    """One totals line, then one line per resource still billing with the command that releases it."""
    counts = {
        action: sum(o.action == action for o in outcomes) for action in ("stopped", "deleted", "kept", "absent", "finished", "failed")
    }
    lines = [f"event=teardown_done reason={reason} " + " ".join(f"{k}={v}" for k, v in counts.items())]
    for outcome in outcomes:
        if outcome.action == "failed":
            kind = KINDS[outcome.resource.kind]
            lines.append(
                f"event=still_billing kind={kind.name} name={outcome.resource.name} release_with={kind.command(outcome.resource.name)!r}"
            )
    return lines
