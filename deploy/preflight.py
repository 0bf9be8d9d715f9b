"""The pre-flight of a new account: what fails a first run, each finding with its fix.

    python -m deploy.pipeline check      # also the first step of `all`; deploy/push_and_train.sh runs it before building

A new account fails in ways no request validator sees: credentials for another region, a bucket
in another region (SageMaker reads channels and writes artifacts in the job's region), a role
SageMaker may not assume, GPU quotas at 0 (Spot training included), a Docker that cannot build
linux/amd64 images. Each check prints one ``check=... status=ok|problem|warning`` line; a
``problem`` stops the run before anything is created (exit 2). Only reads are sent. What cannot
be read (a denied ``iam:GetRole``, Service Quotas not answering) is a warning naming what to look
at by hand, never a guess.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

from deploy import permissions
from deploy.aws import Aws
from deploy.config import DeployConfig

SAGEMAKER = "sagemaker.amazonaws.com"
TRUST_POLICY = {
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Allow", "Principal": {"Service": SAGEMAKER}, "Action": "sts:AssumeRole"}],
}
_ARCH = {"x86_64": "amd64", "aarch64": "arm64"}
SERVERLESS_CONCURRENCY = "Maximum total concurrency that can be allocated across all serverless endpoints"


@dataclass(frozen=True)
class Finding:
    check: str
    status: str  # ok | problem | warning
    detail: str
    fix: str = ""

    def line(self) -> str:
        fix = f" fix={self.fix!r}" if self.fix else ""
        return f"check={self.check} status={self.status} detail={self.detail!r}{fix}"


def _code(exc: ClientError) -> str:
    return exc.response.get("Error", {}).get("Code", "")


def credentials(aws: Aws, cfg: DeployConfig) -> Finding:
    try:
        who = aws.client("sts").get_caller_identity()
    except NoCredentialsError:
        return Finding("credentials", "problem", "no AWS credentials found", "aws configure (or AWS_PROFILE=<profile>, or aws sso login)")
    except ClientError as exc:
        return Finding("credentials", "problem", f"credentials refused ({_code(exc)})", "renew them: aws sso login, or new access keys")
    return Finding("credentials", "ok", f"account={who['Account']} arn={who['Arn']} region={cfg.region}")


def bucket(aws: Aws, cfg: DeployConfig) -> Finding:
    try:
        location = aws.client("s3").get_bucket_location(Bucket=cfg.bucket).get("LocationConstraint")
    except ClientError as exc:
        if _code(exc) == "NoSuchBucket":
            return Finding("bucket", "problem", f"bucket {cfg.bucket} does not exist", f"aws s3 mb s3://{cfg.bucket} --region {cfg.region}")
        return Finding(
            "bucket", "problem", f"cannot read bucket {cfg.bucket}'s region ({_code(exc)})", "allow s3:GetBucketLocation, or fix the name"
        )
    region = {None: "us-east-1", "": "us-east-1", "EU": "eu-west-1"}.get(location, location)
    if region != cfg.region:
        return Finding(
            "bucket",
            "problem",
            f"bucket {cfg.bucket} is in {region}; SageMaker reads channels and writes artifacts in the jobs' region ({cfg.region})",
            f"set region = {region!r}, or use a bucket in {cfg.region} (aws s3 mb s3://<name> --region {cfg.region})",
        )
    return Finding("bucket", "ok", f"bucket={cfg.bucket} region={region}")


def _trusts_sagemaker(policy: dict[str, Any]) -> bool:
    statements = policy.get("Statement", [])
    for statement in statements if isinstance(statements, list) else [statements]:
        actions = statement.get("Action", [])
        services = statement.get("Principal", {}).get("Service", []) if isinstance(statement.get("Principal"), dict) else []
        actions, services = ([a] if isinstance(a, str) else a for a in (actions, services))
        if statement.get("Effect") == "Allow" and SAGEMAKER in services and {"sts:AssumeRole", "sts:*", "*"} & set(actions):
            return True
    return False


def role(aws: Aws, cfg: DeployConfig, account: str) -> Finding:
    name = cfg.role_arn.rsplit("/", 1)[-1]
    role_account = cfg.role_arn.split(":")[4]
    if role_account != account:
        return Finding("role", "warning", f"{cfg.role_arn} belongs to account {role_account}, not {account}: not checked from here")
    try:
        document = aws.client("iam").get_role(RoleName=name)["Role"]["AssumeRolePolicyDocument"]
    except ClientError as exc:
        if _code(exc) == "NoSuchEntity":
            return Finding(
                "role", "problem", f"role {name} does not exist in account {account}", "create a SageMaker execution role, or fix role_arn"
            )
        return Finding("role", "warning", f"cannot read role {name} ({_code(exc)}): check that its trust policy names {SAGEMAKER}")
    policy = json.loads(document) if isinstance(document, str) else document
    if not _trusts_sagemaker(policy):
        fix = f"aws iam update-assume-role-policy --role-name {name} --policy-document '{json.dumps(TRUST_POLICY)}' (replaces the trust policy)"
        return Finding("role", "problem", f"role {name}'s trust policy does not let {SAGEMAKER} assume it", fix)
    return Finding("role", "ok", f"role={name} trusts {SAGEMAKER}")


def quota_needs(cfg: DeployConfig, plan: list[str]) -> Counter[str]:
    """Service Quotas names -> instances the planned steps hold at once."""
    needs: Counter[str] = Counter()
    training = f"{cfg.train_instance_type} for {'spot ' if cfg.use_spot else ''}training job usage"
    if "tune" in plan:
        needs[training] = max(needs[training], cfg.max_parallel_jobs * cfg.train_instance_count)
    if "train" in plan:
        needs[training] = max(needs[training], cfg.train_instance_count)
    for step, instance_type, count in (
        ("deploy", cfg.endpoint_instance_type, cfg.autoscaling.max_instances),  # as many as autoscaling may start
        ("mme", cfg.multi_model_instance_type, 1),
        ("clarify", cfg.endpoint_instance_type, 1),
        ("async", cfg.async_inference.instance_type, cfg.async_inference.max_instances),
    ):
        if step in plan:
            needs[f"{instance_type} for endpoint usage"] += count
    if "promote" in plan:  # blue/green: the new fleet comes up beside the old one
        needs[f"{cfg.endpoint_instance_type} for endpoint usage"] += 2 * cfg.rollout.instance_count
    if "transform" in plan or "explain" in plan:  # one instance each, one job at a time (the steps run in turn)
        needs[f"{cfg.transform_instance_type} for transform job usage"] += 1
    if "clarify" in plan:
        needs[f"{cfg.clarify_instance_type} for processing job usage"] += 1
    if "serverless" in plan:
        needs[SERVERLESS_CONCURRENCY] += cfg.serverless.max_concurrency
    return needs


def _quota_values(aws: Aws, operation: str) -> dict[str, dict[str, Any]]:
    client = aws.client("service-quotas")
    return {q["QuotaName"]: q for page in client.get_paginator(operation).paginate(ServiceCode="sagemaker") for q in page["Quotas"]}


def quotas(aws: Aws, cfg: DeployConfig, plan: list[str], needs: Counter[str] | None = None) -> Iterator[Finding]:
    """Applied values (ListServiceQuotas); defaults (ListAWSDefaultServiceQuotas) for quotas never changed.
    ``needs``: given instead of the plan's (promote counts the fleet it doubles)."""
    needs = quota_needs(cfg, plan) if needs is None else needs
    try:
        found = _quota_values(aws, "list_service_quotas")
        missing = [name for name in needs if name not in found]
        if missing:
            found = {**_quota_values(aws, "list_aws_default_service_quotas"), **found}
    except (ClientError, BotoCoreError) as exc:
        code = _code(exc) if isinstance(exc, ClientError) else type(exc).__name__
        names = "; ".join(needs)
        yield Finding(
            "quotas",
            "warning",
            f"Service Quotas did not answer ({code})",
            f"check by hand (console: Service Quotas > Amazon SageMaker): {names}",
        )
        return
    for name, need in needs.items():
        quota = found.get(name)
        if quota is None:
            yield Finding(
                "quota", "warning", f"{name!r} is not listed in {cfg.region}", "check the console: the type may not exist in this region"
            )
            continue
        value = int(quota["Value"])
        if value >= need:
            yield Finding("quota", "ok", f"{name!r} = {value} (needs {need})")
            continue
        request = (
            f"aws service-quotas request-service-quota-increase --service-code sagemaker --quota-code {quota['QuotaCode']} "
            f"--desired-value {need} --region {cfg.region}"
        )
        lower = f", or set max_parallel_jobs = {value}" if value and "training" in name and need > cfg.train_instance_count else ""
        yield Finding("quota", "problem", f"{name!r} is {value} in {cfg.region}; the run holds {need} at once", f"{request}{lower}")


def docker() -> Finding:
    """The image is built for linux/amd64 (what SageMaker runs); elsewhere Docker needs emulation."""
    command = os.environ.get("DOCKER", "docker")
    if shutil.which(command) is None:
        return Finding(
            "docker", "warning", f"{command} not found: needed only to build and push (deploy/push_and_train.sh)", "install Docker"
        )
    try:
        answer = subprocess.run(
            [command, "version", "--format", "{{.Server.Os}}/{{.Server.Arch}}"], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return Finding("docker", "warning", f"{command} version failed ({type(exc).__name__})", "start Docker")
    platform = answer.stdout.strip()
    if answer.returncode != 0 or "/" not in platform:
        return Finding("docker", "warning", "the Docker daemon does not answer: needed only to build and push", "start Docker")
    os_name, arch = platform.split("/", 1)
    platform = f"{os_name}/{_ARCH.get(arch, arch)}"
    if platform != "linux/amd64":
        fix = "Docker Desktop emulates amd64; on Linux: docker run --privileged --rm tonistiigi/binfmt --install amd64"
        return Finding("docker", "warning", f"Docker runs {platform}: the linux/amd64 image is built under emulation (slow)", fix)
    return Finding("docker", "ok", f"platform={platform}")


def allowed(aws: Aws, cfg: DeployConfig) -> Finding:
    """The caller's own policy against deploy/iam/user-policy.json (``deploy.permissions``)."""
    result = permissions.simulate(aws.client("sts"), aws.client("iam"), cfg)
    fix = "attach deploy/iam/user-policy.json with its placeholders filled (docs/aws.md#permissions)"
    if result.denied is None:
        return Finding(
            "permissions", "warning", f"cannot simulate the policy of {result.principal} ({result.reason}): not checked", f"by hand: {fix}"
        )
    if result.denied:
        return Finding("permissions", "problem", f"{result.principal} lacks {', '.join(result.denied)}", fix)
    return Finding("permissions", "ok", f"{result.principal} has every action of deploy/iam/user-policy.json")


def run(aws: Aws, cfg: DeployConfig, plan: list[str]) -> list[Finding]:
    """Every check; without credentials only that finding (nothing else can be asked)."""
    first = credentials(aws, cfg)
    if first.status != "ok":
        return [first]
    return [first, bucket(aws, cfg), role(aws, cfg, aws.account()), allowed(aws, cfg), *quotas(aws, cfg, plan), docker()]
