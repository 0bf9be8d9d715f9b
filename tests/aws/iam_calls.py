"""The AWS API calls the code can make, and the IAM action each needs (tests/aws/test_iam.py).

Two sources: the boto3 calls written in ``deploy/`` (read with ``ast``: a method called on a client
made by ``.client("<service>")``, on a variable or parameter holding one, paginators and waiters,
and operation names kept as strings in dispatch tables), and the calls observed while the aws tier
runs (``Recorder``: every API call botocore makes in the test process, the SDK's included).
"""

from __future__ import annotations

import ast
import json
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import botocore.session
from botocore import xform_name
from botocore.client import BaseClient

from deploy.teardown import KINDS
from tests.helpers import REPO_ROOT

DEPLOY = REPO_ROOT / "deploy"
IAM = DEPLOY / "iam"
# names the code gives clients (parameters and variables), beside those assigned from .client("...")
CLIENT_NAMES = {
    "s3": "s3",
    "s3_client": "s3",
    "sm": "sagemaker",
    "sagemaker_client": "sagemaker",
    "runtime": "sagemaker-runtime",
    "ecr": "ecr",
    "autoscaling": "application-autoscaling",
    "cloudwatch": "cloudwatch",
    "quotas": "service-quotas",
    "iam": "iam",
    "sts": "sts",
    "kms": "kms",
    "logs": "logs",
}
# the IAM service prefix of each boto3 service; and calls whose action differs from their name
PREFIX = {"sagemaker-runtime": "sagemaker", "service-quotas": "servicequotas"}
ACTION = {
    ("s3", "ListObjectsV2"): ["s3:ListBucket"],
    ("s3", "ListObjects"): ["s3:ListBucket"],
    ("s3", "HeadBucket"): ["s3:ListBucket"],
    ("s3", "HeadObject"): ["s3:GetObject"],
    ("s3", "CopyObject"): ["s3:GetObject", "s3:PutObject"],
    ("s3", "DeleteObjects"): ["s3:DeleteObject"],
    ("s3", "CreateMultipartUpload"): ["s3:PutObject"],
    ("s3", "UploadPart"): ["s3:PutObject"],
    ("s3", "CompleteMultipartUpload"): ["s3:PutObject"],
    ("s3", "UploadPartCopy"): ["s3:GetObject", "s3:PutObject"],  # a managed copy of a large object
    ("s3", "AbortMultipartUpload"): ["s3:AbortMultipartUpload"],
    ("s3", "GetBucketLocation"): ["s3:GetBucketLocation"],
    ("s3", "GetBucketLifecycleConfiguration"): ["s3:GetLifecycleConfiguration"],
    ("s3", "PutBucketLifecycleConfiguration"): ["s3:PutLifecycleConfiguration"],
    ("sts", "GetCallerIdentity"): [],  # needs no permission
}


def _model(service: str) -> Any:
    return botocore.session.get_session().get_service_model(service)


def operations(service: str) -> dict[str, str]:
    """snake_case method -> API operation name."""
    return {xform_name(name): name for name in _model(service).operation_names}


def _waiter_operation(service: str, waiter: str) -> str | None:
    session = botocore.session.get_session()
    model = session.get_waiter_model(service)
    for name in model.waiter_names:
        if xform_name(name) == waiter:
            return model.get_waiter(name).operation
    return None


def static_calls() -> set[tuple[str, str]]:
    """(boto3 service, API operation) for every call written in deploy/."""
    files = sorted(DEPLOY.rglob("*.py"))
    services = set()
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            if _client_service(node):
                services.add(_client_service(node))
    tables = {service: operations(service) for service in services | set(CLIENT_NAMES.values())}
    used = set(services)
    found: set[tuple[str, str]] = set()
    for path in files:
        tree = ast.parse(path.read_text())
        names = dict(CLIENT_NAMES)
        for node in ast.walk(tree):
            if isinstance(node, ast.Assign) and (service := _client_service(node.value)):
                names |= {t.id: service for t in node.targets if isinstance(t, ast.Name)}
        module_services = {s for s in names.values() if s in used}
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                receiver = node.func.value.id if isinstance(node.func.value, ast.Name) else None
                service = _client_service(node.func.value) or names.get(receiver or "")
                if receiver == "client" and service is None:  # a client of any kind (teardown): each used service with the method
                    found |= {(s, tables[s][node.func.attr]) for s in used if node.func.attr in tables[s]}
                if service is None:
                    continue
                method = node.func.attr
                if method in ("get_paginator", "get_waiter") and node.args and isinstance(node.args[0], ast.Constant):
                    name = str(node.args[0].value)
                    operation = tables[service].get(name) if method == "get_paginator" else _waiter_operation(service, name)
                    if operation:
                        found.add((service, operation))
                elif method in tables[service]:
                    found.add((service, tables[service][method]))
            elif isinstance(node, ast.Constant) and isinstance(node.value, str) and "_" in node.value:
                # a dispatch table's method name (teardown, cleanup): each service of the module that has it
                found |= {(s, tables[s][node.value]) for s in module_services if node.value in tables[s]}
    return found


def dispatched_calls() -> set[tuple[str, str]]:
    """The calls teardown builds from its kinds' method names (``deploy.teardown.KINDS``)."""
    found = set()
    for kind in KINDS.values():
        table = operations(kind.service)
        found |= {(kind.service, table[m]) for m in (kind.describe, kind.release) if m in table}
    return found


def _client_service(node: ast.AST) -> str | None:
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "client"
        and node.args
        and isinstance(node.args[0], ast.Constant)
        and isinstance(node.args[0].value, str)
    ):
        return node.args[0].value
    return None


def actions(service: str, operation: str) -> list[str]:
    if (service, operation) in ACTION:
        return ACTION[(service, operation)]
    return [f"{PREFIX.get(service, service)}:{operation}"]


def _from_deploy(frame: Any) -> bool:
    """The call comes from deploy/ (directly or through the SDK), not from a test's own set-up or assertions."""
    root = str(DEPLOY) + "/"
    while frame is not None:
        if frame.f_code.co_filename.startswith(root):
            return True
        frame = frame.f_back
    return False


@dataclass
class Recorder:
    """Every API call deploy/ makes in this process, (service, operation): through the SDK too, and
    those a dry run answers locally. Installed around ``BaseClient._make_api_call`` for the session."""

    seen: set[tuple[str, str]] = field(default_factory=set)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def install(self) -> Callable[[], None]:
        original = BaseClient._make_api_call
        recorder = self

        def recorded(client: Any, operation_name: str, api_params: Any) -> Any:
            if _from_deploy(sys._getframe(1)):
                with recorder._lock:
                    recorder.seen.add((client.meta.service_model.service_name, operation_name))
            return original(client, operation_name, api_params)

        BaseClient._make_api_call = recorded  # type: ignore[method-assign]

        def uninstall() -> None:
            BaseClient._make_api_call = original  # type: ignore[method-assign]

        return uninstall

    def save(self, path: Path) -> None:
        previous = {tuple(x) for x in json.loads(path.read_text())} if path.exists() else set()
        path.write_text(json.dumps(sorted(previous | self.seen), indent=1))


def missing(calls: set[tuple[str, str]], granted: set[str]) -> list[str]:
    """``service Operation -> action`` for each call whose action the policy lacks."""
    return sorted(f"{s} {o} -> {a}" for s, o in calls for a in actions(s, o) if a not in granted)


def policy_actions(path: Path) -> set[str]:
    """Every action a policy file allows (``Action`` strings, one or a list)."""
    out = set()
    for statement in json.loads(path.read_text())["Statement"]:
        granted = statement.get("Action", [])
        out |= {granted} if isinstance(granted, str) else set(granted)
    return out
