"""Which actions of the policy a run needs the caller lacks, asked of IAM's policy simulator.

``deploy/iam/user-policy.json`` is the policy a user applies (docs/aws.md#permissions). Each of its
statements is simulated for the caller (``iam:SimulatePrincipalPolicy`` on the caller's own user
or role), on the resources the run will touch: the statement's resources with the placeholders
filled from the configuration (bucket, prefix, repository, role, account, region, a run name
``ic-...``), and the statement's condition values as the request context. An action the simulator
does not allow is named; a caller that may not simulate (or an emulator that cannot) gets one
warning saying so, never a guess. The simulator sees identity policies and permission boundaries,
not organisation SCPs: an allowed answer is necessary, not sufficient.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError
from botocore.parsers import ResponseParserError

from deploy.config import DeployConfig

IAM_DIR = Path(__file__).resolve().parent / "iam"
USER_POLICY = IAM_DIR / "user-policy.json"
RUN_NAME = "ic-preflight-1"  # stands for every name the run gives (ic-*)


@dataclass(frozen=True)
class Simulation:
    principal: str
    denied: list[str] | None  # None: could not simulate
    reason: str = ""


def principal_arn(caller_arn: str) -> str:
    """The IAM ARN to simulate: an assumed-role session's role, or the user itself."""
    parts = caller_arn.split(":", 5)
    if len(parts) == 6 and parts[2] == "sts" and parts[5].startswith("assumed-role/"):
        role = parts[5].split("/")[1]
        return f"arn:{parts[1]}:iam::{parts[4]}:role/{role}"
    return caller_arn


def placeholders(cfg: DeployConfig, account: str, caller_arn: str) -> dict[str, str]:
    return {
        "<REGION>": cfg.region,
        "<ACCOUNT_ID>": account,
        "<BUCKET>": cfg.bucket,
        "<PREFIX>": cfg.prefix,
        "<REPOSITORY>": cfg.repository,
        "<ROLE_NAME>": cfg.role_arn.rsplit("/", 1)[-1],
        "<GROUP>": cfg.model_registry.group,
        "${aws:username}": caller_arn.rsplit("/", 1)[-1],
    }


def _fill(value: Any, values: dict[str, str]) -> Any:
    text = json.dumps(value)
    for key, filled in values.items():
        text = text.replace(key, filled)
    return json.loads(text.replace("ic-*", RUN_NAME).replace("sm-clarify-*", "sm-clarify-preflight").replace("/*", "/run"))


def _context(condition: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    entries = []
    for tests in condition.values():
        for key, value in tests.items():
            first = value[0] if isinstance(value, list) else value
            entries.append({"ContextKeyName": key, "ContextKeyValues": [first], "ContextKeyType": "string"})
    return entries


def simulate(sts: Any, iam: Any, cfg: DeployConfig, policy_path: Path = USER_POLICY) -> Simulation:
    identity = sts.get_caller_identity()
    principal = principal_arn(identity["Arn"])
    values = placeholders(cfg, identity["Account"], identity["Arn"])
    denied: list[str] = []
    try:
        for statement in json.loads(policy_path.read_text())["Statement"]:
            actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
            resources = _fill(statement["Resource"], values)
            arguments: dict[str, Any] = {"PolicySourceArn": principal, "ActionNames": actions}
            if resources != "*":
                arguments["ResourceArns"] = resources if isinstance(resources, list) else [resources]
            if "Condition" in statement:
                arguments["ContextEntries"] = _context(_fill(statement["Condition"], values))
            for page in iam.get_paginator("simulate_principal_policy").paginate(**arguments):
                denied += [r["EvalActionName"] for r in page["EvaluationResults"] if r["EvalDecision"] != "allowed"]
    except (ClientError, BotoCoreError, ResponseParserError) as exc:  # the last: an answer that is not IAM's
        code = exc.response.get("Error", {}).get("Code", "") if isinstance(exc, ClientError) else type(exc).__name__
        return Simulation(principal, None, code or "no answer")
    return Simulation(principal, sorted(set(denied)))
