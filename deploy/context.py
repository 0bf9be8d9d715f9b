"""What every step receives: the configuration, the AWS session, the run's state, and the names.

Names are unique per attempt: ``ic-<kind>-<run id>-<attempt>``. SageMaker refuses a second job,
model or endpoint with a name already used in the account and region (and for a while after
deletion), so running a step again, after a failure say, takes the next attempt number. Every
resource is written to the run's state before the request that creates it is sent, so an
interrupted run still knows what to release.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deploy import ecr, manifest, ownership, sdk, teardown
from deploy.aws import Aws
from deploy.config import DeployConfig
from deploy.state import Resource, RunState

NAME_LIMITS = {"tune": 32}  # HyperParameterTuningJobName; every other name takes 63
DEFAULT_NAME_LIMIT = 63


class StepError(RuntimeError):
    """A step cannot run (a missing earlier step, a refused confirmation)."""


@dataclass
class Context:
    cfg: DeployConfig
    aws: Aws
    state: RunState
    yes: bool = False
    keep_endpoint: bool = False
    data: str | None = None
    pretrained_dir: Path | None = None
    sample: Path | None = None
    all_runs: bool = False
    version: int | None = None  # models/approve/reject/promote: a version of the registry group
    endpoint_name: str | None = None  # promote/retire/drift: the endpoint clients call
    reason: str | None = None  # approve/reject: the approval description
    plan: list[str] = field(default_factory=list)  # the steps of this invocation (the pre-flight checks their quotas)
    lines: list[str] = field(default_factory=list)
    _sagemaker: Any = None

    @property
    def dry_run(self) -> bool:
        return self.aws.dry_run is not None

    @property
    def run_dir(self) -> Path:
        return self.state.folder(self.cfg.runs_dir)

    @property
    def sagemaker(self) -> Any:
        """The SDK session (created on first use: importing the SDK takes seconds)."""
        if self._sagemaker is None:
            self._sagemaker = sdk.session(self.aws.boto)
        return self._sagemaker

    def say(self, line: str) -> None:
        """Events to stdout; in a dry run to stderr, so that stdout is exactly the JSON of the requests."""
        self.lines.append(line)
        print(line, file=sys.stderr if self.dry_run else sys.stdout, flush=True)

    def save(self) -> None:
        if not self.dry_run:
            self.state.save(self.cfg.runs_dir)

    def image_uri(self) -> str:
        """The run's image, by digest (``deploy.ecr.pinned``): resolved once, so every job of the run uses the same."""
        if self.state.image_uri is None:
            try:
                image = ecr.pinned(self.aws, self.cfg, self.say)
                if self.aws.dry_run is None:  # before any job or model: an image SageMaker would refuse to pull
                    self.say(f"event=manifest_ok image={image} media_type={manifest.check(self.aws, image)}")
            except (ecr.ImageError, manifest.ManifestRefused) as exc:
                raise StepError(str(exc)) from None
            self.state.image_uri = image
            self.save()
        return self.state.image_uri

    def need(self, attribute: str, step: str) -> Any:
        value = getattr(self.state, attribute)
        if value is None and self.dry_run:  # placeholders of the right shape for the printed requests
            return f"{self.cfg.s3_root}/runs/dry-run/{attribute}"
        if not value:
            raise StepError(f"run {self.state.run_id} has no {attribute}: run the '{step}' step first")
        return value

    def next_name(self, kind: str) -> str:
        """The name the next attempt of ``kind`` will take (what ``new_name`` returns next)."""
        name = f"ic-{kind}-{self.state.run_id}-{self.state.attempts.get(kind, 0) + 1}"
        limit = NAME_LIMITS.get(kind, DEFAULT_NAME_LIMIT)
        if len(name) > limit:
            raise StepError(f"{name!r} is longer than SageMaker's {limit} characters: start a new run (a shorter --run-id)")
        return name

    def new_name(self, kind: str) -> str:
        name = self.next_name(kind)
        self.state.attempts[kind] = self.state.attempts.get(kind, 0) + 1
        self.save()
        return name

    def record(self, kind: str, name: str) -> None:
        """Written before the create request is sent: teardown must know it even if the answer never arrives."""
        resource = Resource(kind=kind, name=name)
        if resource not in self.state.resources:
            self.state.resources.append(resource)
        self.save()

    def release(self, resources: list[Resource], *, keep_hosting: bool, reason: str) -> list[teardown.Outcome]:
        """Stop or delete ``resources`` (``deploy.teardown``), say what happened, and forget what is gone."""
        if not resources or self.dry_run:
            return []
        waiting = teardown.Waiting(self.cfg.teardown_poll_s, self.cfg.teardown_wait_s)
        rollout = [r for r in resources if ownership.is_rollout_resource(r)]
        resources = [r for r in resources if r not in rollout]
        outcomes = teardown.release(self.aws.client, resources, keep_hosting=keep_hosting, waiting=waiting, say=self.say)
        if rollout:  # after the endpoints went: what an endpoint still uses (or is rolling out to) stays
            used = ownership.in_use(self.aws.client("sagemaker"))
            spared = [r for r in rollout if (r.kind, r.name) in used]
            for resource in spared:
                self.say(f"event=teardown kind={resource.kind} name={resource.name} action=in_use")
            free = [r for r in rollout if r not in spared]
            outcomes += teardown.release(self.aws.client, free, keep_hosting=keep_hosting, waiting=waiting, say=self.say)
            outcomes += [teardown.Outcome(r, "kept", "in use by an endpoint") for r in spared]
        for line in teardown.summary(outcomes, reason):
            self.say(line)
        gone = {(o.resource.kind, o.resource.name) for o in outcomes if o.action in ("deleted", "absent")}
        for attribute, kind in (
            ("endpoint", "endpoint"),
            ("multi_model_endpoint", "endpoint"),
            ("async_endpoint", "endpoint"),
            ("serverless_endpoint", "endpoint"),
            ("model_name", "model"),
        ):
            if (kind, getattr(self.state, attribute)) in gone:
                setattr(self.state, attribute, None)
        for endpoint in [e for e in self.state.scaling if ("endpoint", e) in gone]:
            del self.state.scaling[endpoint]  # its policies went with its autoscaling target
        self.save()
        return outcomes
