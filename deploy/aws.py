"""AWS sessions for the pipeline, the dry-run interceptor, and the tags every resource carries.

``AWS_ENDPOINT_URL`` (read by boto3 itself) points every client at another endpoint, which is
how the tests run the whole pipeline against a local AWS emulator with unchanged code.

Dry run: botocore builds and validates each request against the service model exactly as for
a real call; a ``before-call`` hook then records mutating calls and answers them locally, so
nothing is sent. The JSON printed is what the real run would send, built by the same code.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import boto3

PROJECT_TAG = "image-classifier"
TAG_PROJECT_KEY = "project"
TAG_RUN_KEY = "run-id"
_MUTATING = ("Create", "Delete", "Put", "Add", "Update", "Stop", "Start", "Copy", "Upload", "Complete", "Abort")
_DRY_RUN_ACCOUNT = "000000000000"


def quiet_sdk() -> None:
    """No telemetry, no v2 banner: otherwise every SDK call tries the network first."""
    os.environ.setdefault("SAGEMAKER_SUPPRESS_V2_WARNING", "1")
    config = Path(tempfile.gettempdir()) / "sagemaker-telemetry-opt-out.yaml"
    config.write_text('SchemaVersion: "1.0"\nSageMaker:\n  PythonSDK:\n    Modules:\n      TelemetryOptOut: true\n')
    os.environ.setdefault("SAGEMAKER_USER_CONFIG_OVERRIDE", str(config))


def tag_list(run_id: str | None, extra: dict[str, str] | None = None) -> list[dict[str, str]]:
    """``project`` and ``run-id`` on everything a run creates: cleanup deletes by these and only these."""
    tags = {TAG_PROJECT_KEY: PROJECT_TAG, **({TAG_RUN_KEY: run_id} if run_id else {}), **(extra or {})}
    return [{"Key": k, "Value": v} for k, v in tags.items()]


@dataclass
class DryRun:
    """Records the mutating calls botocore has validated and answers them without sending."""

    calls: list[dict[str, Any]] = field(default_factory=list)

    def attach(self, session: boto3.Session) -> None:
        events = session._session.get_component("event_emitter")  # every client of this session shares it
        events.register("provide-client-params.*.*", self._remember)
        events.register("before-call.*.*", self._answer)

    def _remember(self, params: dict[str, Any], model: Any, **_: Any) -> None:
        self._pending = (model.service_model.service_name, model.name, json.loads(json.dumps(params, default=str)))

    def _answer(self, model: Any, **_: Any) -> tuple[Any, dict[str, Any]]:
        service, operation, params = self._pending
        if operation.startswith(_MUTATING):
            self.calls.append({"service": service, "operation": operation, "request": params})
            return _FakeHttp(), _placeholder(model, params)
        # reads: answer with an empty shape; the pipeline never branches on them in a dry run
        return _FakeHttp(), _placeholder(model, params)

    def dump(self) -> str:
        return json.dumps(self.calls, indent=2, sort_keys=False)


class _FakeHttp:
    status_code = 200
    headers: ClassVar[dict[str, str]] = {}


def _placeholder(model: Any, params: dict[str, Any]) -> dict[str, Any]:
    """A response with every top-level ARN/name string filled, enough for the SDK to carry on."""
    out: dict[str, Any] = {"ResponseMetadata": {"HTTPStatusCode": 200, "RequestId": "dry-run"}}
    shape = model.output_shape
    if shape is None:
        return out
    name = next((v for k, v in params.items() if k.endswith("Name") and isinstance(v, str)), "dry-run")
    for member, member_shape in shape.members.items():
        if member_shape.type_name == "string" and member.endswith(("Arn", "Name", "Uri", "Id")):
            out[member] = f"arn:aws:dry-run:::{name}" if member.endswith("Arn") else name
    if model.name == "GetCallerIdentity":
        out.update(Account=_DRY_RUN_ACCOUNT, Arn=f"arn:aws:iam::{_DRY_RUN_ACCOUNT}:user/dry-run", UserId="dry-run")
    return out


@dataclass
class Aws:
    """The boto3 and SageMaker SDK sessions of one pipeline run."""

    boto: boto3.Session
    dry_run: DryRun | None = None
    _sagemaker: Any = None

    @classmethod
    def connect(cls, region: str, *, dry_run: bool = False) -> Aws:
        quiet_sdk()
        session = boto3.Session(region_name=region)
        recorder = DryRun() if dry_run else None
        if recorder is not None:
            recorder.attach(session)
        return cls(boto=session, dry_run=recorder)

    def client(self, service: str) -> Any:
        return self.boto.client(service)

    @property
    def sagemaker(self) -> Any:
        """The SDK v2 session (created lazily: importing the SDK takes seconds)."""
        if self._sagemaker is None:
            from deploy import sdk

            self._sagemaker = sdk.session(self.boto)
        return self._sagemaker

    def account(self) -> str:
        return self.client("sts").get_caller_identity()["Account"]
