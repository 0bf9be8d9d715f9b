"""The dry run: requests built and validated exactly as for a real run, recorded, never sent.

botocore builds and validates each request against the service model as for a real call (and
``deploy.aws``'s guard checks what botocore skips); a ``before-call`` hook then records the
mutating calls and answers every call locally with a placeholder of the right shape. The JSON
printed is what the real run would send, built by the same code.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, ClassVar

_MUTATING = ("Create", "Delete", "Put", "Add", "Update", "Stop", "Start", "Copy", "Upload", "Complete", "Abort", "Register", "Deregister")
DRY_RUN_ACCOUNT = "000000000000"


@dataclass
class DryRun:
    """Records the mutating calls botocore has validated and answers them without sending."""

    calls: list[dict[str, Any]] = field(default_factory=list)

    def attach(self, events: Any) -> None:
        events.register("before-parameter-build.*.*", self._remember)  # the parameters as final as the guard sees them
        events.register("before-call.*.*", self._answer)

    def _remember(self, params: dict[str, Any], model: Any, context: dict[str, Any], **_: Any) -> None:
        context["dry_run_request"] = (model.service_model.service_name, model.name, json.loads(json.dumps(params, default=str)))

    def _answer(self, model: Any, context: dict[str, Any], **_: Any) -> tuple[Any, dict[str, Any]]:
        service, operation, params = context["dry_run_request"]
        if operation.startswith(_MUTATING):
            self.calls.append({"service": service, "operation": operation, "request": params})
        # reads are answered with an empty shape too: the pipeline never branches on them in a dry run
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
        if member_shape.type_name == "string" and member.endswith(("Arn", "ARN", "Name", "Uri", "Id")):
            out[member] = f"arn:aws:dry-run:::{name}" if member.endswith(("Arn", "ARN")) else name
    if model.name == "GetCallerIdentity":
        out.update(Account=DRY_RUN_ACCOUNT, Arn=f"arn:aws:iam::{DRY_RUN_ACCOUNT}:user/dry-run", UserId="dry-run")
    return out
