"""AWS sessions for the pipeline: every request checked before it is sent, or recorded in a dry run.

``AWS_ENDPOINT_URL`` (read by boto3 itself) points every client at another endpoint, which is
how the tests run the whole pipeline against a local AWS emulator with unchanged code.

Every client of the session (the SDK's too: it is built on this boto3 session) shares one event
emitter, on which two hooks sit:

- the guard, before each request is built: the service model's ``max``/``pattern``/``enum``
  (``deploy.service_model``) and SageMaker's cross-field rules (``deploy.rules.RequestRules``).
  A request AWS would refuse raises ``RequestRefused`` and is never sent. After a successful
  create, its name is remembered: SageMaker refuses to reuse it.
- in a dry run, the recorder (``deploy.dryrun``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import boto3

from deploy import service_model
from deploy.dryrun import DryRun
from deploy.rules import RequestRefused, RequestRules


@dataclass
class Guard:
    rules: RequestRules = field(default_factory=RequestRules)

    def attach(self, events: Any) -> None:
        events.register("before-parameter-build.*.*", self._check)
        events.register("after-call.*.*", self._created)

    def _check(self, params: dict[str, Any], model: Any, context: dict[str, Any], **_: Any) -> None:
        service = model.service_model.service_name
        problems = [str(v) for v in service_model.violations(model, params)]
        problems += self.rules.refusals(service, model.name, params)
        if problems:
            raise RequestRefused(model.name, problems)
        context["guarded_request"] = (service, params)

    def _created(self, http_response: Any, model: Any, context: dict[str, Any], **_: Any) -> None:
        if "guarded_request" in context and http_response.status_code < 300:
            service, params = context["guarded_request"]
            self.rules.record(service, model.name, params)


@dataclass
class Aws:
    """The boto3 session of one pipeline run, its guard and (in a dry run) its recorder."""

    boto: boto3.Session
    dry_run: DryRun | None = None
    guard: Guard = field(default_factory=Guard)
    _clients: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def connect(cls, region: str, *, dry_run: bool = False, cuda_compat: bool = False) -> Aws:
        """``cuda_compat``: the image carries NVIDIA's compatibility libraries (``image_cuda_compat``)."""
        session = boto3.Session(region_name=region)
        events = session._session.get_component("event_emitter")  # shared by every client of this session
        aws = cls(boto=session, dry_run=DryRun() if dry_run else None, guard=Guard(RequestRules(cuda_compat=cuda_compat)))
        aws.guard.attach(events)
        if aws.dry_run is not None:
            aws.dry_run.attach(events)
        return aws

    def client(self, service: str) -> Any:
        if service not in self._clients:
            self._clients[service] = self.boto.client(service)
        return self._clients[service]

    def account(self) -> str:
        return self.client("sts").get_caller_identity()["Account"]


__all__ = ["Aws", "Guard", "RequestRefused"]
