"""Stop and delete what a run created, so that nothing is left billing.

Used when a step fails, when the run is interrupted (``deploy.signals``), at the end of a run
(its endpoints, unless ``--keep-endpoint``) and by ``cleanup`` on what it finds by tag.

Each kind says how to read its status, which statuses still bill, and how to stop or delete it.
Jobs in progress are stopped (SageMaker completes the stop on its side); then endpoints, their
configs and their models are deleted, in that order. SageMaker refuses to delete an endpoint
while it is being created or updated: teardown waits for it (``teardown_poll_s``, at most
``teardown_wait_s``), then deletes it. What cannot be released is printed with the command
that releases it by hand, and the run exits non-zero.

A kind is one entry in ``KINDS``: async and serverless endpoints are endpoints; an autoscaling
target (Application Auto Scaling; its scaling policies are deleted with it) and the CloudWatch alarm
that scales an async endpoint up from zero go before the endpoint they watch.
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
    """A SageMaker resource kind: described, stopped or deleted by name through the sagemaker client."""

    name: str
    describe: str  # boto3 method of the sagemaker client
    key: str  # its name parameter
    status_key: str | None  # None: the resource has no status, only exists or not
    billing: frozenset[str]  # statuses to release
    busy: frozenset[str]  # statuses in which SageMaker refuses the release: wait, then retry
    release: str  # stop_* or delete_*
    hosting: bool  # deleted at the end of a run unless --keep-endpoint
    service: str = "sagemaker"  # the boto3 client it takes

    def status(self, sm: Any, name: str) -> str | None:
        """The current status; ``"exists"`` for kinds without one; None when it is gone."""
        try:
            answer = getattr(sm, self.describe)(**{self.key: name})
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in _ABSENT_CODES:
                return None
            raise
        return answer.get(self.status_key, "unknown") if self.status_key else "exists"

    def do_release(self, client: Any, name: str) -> None:
        getattr(client, self.release)(**{self.key: name})

    def command(self, name: str) -> str:
        """The AWS CLI line that releases it by hand."""
        flag = re.sub(r"(?<!^)(?=[A-Z])", "-", self.key).lower()
        return f"aws {self.service} {self.release.replace('_', '-')} --{flag} {name}"


SCALABLE_DIMENSION = "sagemaker:variant:DesiredInstanceCount"


@dataclass(frozen=True)
class ScalableTarget(Kind):
    """An endpoint variant registered with Application Auto Scaling; its name is the resource id
    (``endpoint/<endpoint>/variant/<variant>``). Its policies are deleted first: the service deletes them with
    the target, the emulator does not."""

    def status(self, client: Any, name: str) -> str | None:
        found = client.describe_scalable_targets(ServiceNamespace="sagemaker", ResourceIds=[name], ScalableDimension=SCALABLE_DIMENSION)
        return "exists" if found.get("ScalableTargets") else None

    def do_release(self, client: Any, name: str) -> None:
        where = {"ServiceNamespace": "sagemaker", "ResourceId": name, "ScalableDimension": SCALABLE_DIMENSION}
        for policy in client.describe_scaling_policies(**where).get("ScalingPolicies", []):
            client.delete_scaling_policy(PolicyName=policy["PolicyName"], **where)
        client.deregister_scalable_target(**where)

    def command(self, name: str) -> str:
        return (
            f"aws application-autoscaling deregister-scalable-target --service-namespace sagemaker --resource-id {name} "
            f"--scalable-dimension {SCALABLE_DIMENSION}"
        )


@dataclass(frozen=True)
class Alarm(Kind):
    """A CloudWatch alarm of ours (the one that scales an async endpoint up from zero)."""

    def status(self, client: Any, name: str) -> str | None:
        return "exists" if client.describe_alarms(AlarmNames=[name]).get("MetricAlarms") else None

    def do_release(self, client: Any, name: str) -> None:
        client.delete_alarms(AlarmNames=[name])

    def command(self, name: str) -> str:
        return f"aws cloudwatch delete-alarms --alarm-names {name}"


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
        Alarm("alarm", "", "", None, _EXISTS, frozenset(), "delete_alarms", True, "cloudwatch"),
        ScalableTarget(
            "scalable-target", "", "", None, _EXISTS, frozenset(), "deregister_scalable_target", True, "application-autoscaling"
        ),
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
    """``sm``: the client of the kind's service."""
    status = kind.status(sm, name)
    if status is None:
        return "absent", ""
    if status not in kind.billing:
        return "finished", status
    deadline = time.monotonic() + waiting.wait_s
    while True:
        try:
            kind.do_release(sm, name)
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


def release(
    client: Callable[[str], Any], resources: Iterable[Resource], *, keep_hosting: bool, waiting: Waiting, say: Callable[[str], None]
) -> list[Outcome]:
    """Release ``resources`` (jobs first, then alarms, scaling targets, endpoints, configs, models); every outcome is
    said as it happens. ``client``: the boto3 client of a service, by name."""
    outcomes = []
    with signals.deferred(say):
        for resource in _ordered(resources):
            kind = KINDS[resource.kind]
            if kind.hosting and keep_hosting:
                outcome = Outcome(resource, "kept")
            else:
                try:
                    outcome = Outcome(resource, *_release(client(kind.service), kind, resource.name, waiting, say))
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
