"""One validated configuration for every AWS step, checked before any request is sent.

Sources, later ones win: the TOML file (``deploy/config.toml``; ``deploy/config.example.toml``
documents every field), environment variables ``IC_<FIELD>`` (e.g. ``IC_REGION``), then command
line flags (``--region eu-west-1`` or ``--region=eu-west-1``; ``--set key=value`` for lists and
tables). A bad value fails with the field's name, so a typo in an instance type costs nothing
instead of a failed job twenty minutes in. Field checks live on the fields; the rules that tie
fields together (Hyperband and early stopping, Grid and ranges, KMS keys and instance storage,
multi-model and CPU) are ``deploy.refusals.config_refusals``, run by ``load_config``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import tomllib
import types
import typing
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from deploy import gpu_hosts, instances, kms, refusals
from deploy.day_two_options import CaptureOptions, DriftOptions, RegistryOptions, RolloutOptions
from deploy.hosting_options import AsyncOptions, AutoscalingOptions, ServerlessOptions
from deploy.search_space import SearchSpace
from deploy.service_model import enum
from image_classifier.params import EXPLAIN_METHODS

ENV_PREFIX = "IC_"
DEFAULT_CONFIG_FILE = Path(__file__).with_name("config.toml")

_ROLE_ARN = re.compile(r"^arn:aws(-cn|-us-gov)?:iam::\d{12}:role/[\w+=,.@/-]{1,512}$")
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_REPOSITORY = re.compile(r"^[a-z0-9]+([._/-][a-z0-9]+)*$")
_TAG = re.compile(r"^[\w][\w.-]{0,127}$")  # Docker's tag grammar (ECR takes it)


# Debugger, Profiler, Clarify: "auto" tries the service and carries on without it where the
# account is refused it (docs/aws.md: "Services that may be closed"); "on" fails instead; "off".
ServiceMode = Literal["auto", "on", "off"]
DEFAULT_MAX_JOBS = 12


class ConfigError(ValueError):
    """A configuration problem, named by field; raised before any AWS call."""


def _known_regions() -> set[str]:
    import boto3

    session = boto3.session.Session()
    return {region for partition in ("aws", "aws-cn", "aws-us-gov") for region in session.get_available_regions("sagemaker", partition)}


class DeployConfig(BaseModel):
    """Everything the pipeline needs to know about the account and the run."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # account and storage
    region: str
    role_arn: str
    bucket: str
    prefix: str = "image-classifier"
    kms_key_id: str | None = Field(None, description="key id, key ARN, alias or alias ARN: S3, ECR, job outputs, endpoints")
    volume_kms_key_id: str | None = Field(None, description="key id or key ARN for job volumes (default: kms_key_id)")
    # the image: jobs and models name it by digest (deploy.ecr)
    repository: str = "image-classifier"
    image_tag: str | None = Field(None, description="default: a new tag per build (UTC time and git revision)")
    image_uri: str | None = Field(None, description="this image (by digest, or a tag resolved to its digest); default: the newest push")
    images_kept: int = Field(10, ge=1, le=1000, description="ECR keeps the newest N images (untagged ones: a day)")
    registry: str | None = Field(None, description="push to this registry host instead of the account's ECR (mirrors, tests)")
    image_cuda_compat: bool = Field(False, description="built with --build-arg CUDA_COMPAT_IMAGE=...: NVIDIA's compatibility libraries")
    inference_ami_version: str | None = Field(None, description=f"GPU endpoints' host image (default: {gpu_hosts.NATIVE_AMI})")
    # training
    model: str = "resnet50"
    train_instance_type: str = "ml.g5.xlarge"
    train_instance_count: int = Field(1, ge=1, le=64)
    train_volume_gb: int = Field(50, ge=1, le=16384)
    max_run_s: int = Field(6 * 3600, ge=60)
    tuning_epochs: int | None = Field(None, ge=1, description="default: the trainer's rule (from the training images)")
    final_epochs: int | None = Field(None, ge=1, description="default: the trainer's rule, as the trials had")
    hyperparameters: dict[str, str] = Field(default_factory=dict, description="static hyperparameters for every job")
    data_format: Literal["auto", "folders", "shards"] = Field("auto", description="auto: tar shards + FastFile from 10,000 images")
    # tuning
    max_jobs: int | None = Field(None, ge=1, le=500, description=f"default: {DEFAULT_MAX_JOBS}; leave unset with Grid")
    max_parallel_jobs: int = Field(3, ge=1, le=100)
    early_stopping: Literal["Auto", "Off"] | None = Field(None, description="default: Off with Hyperband, Auto otherwise")
    strategy: Literal["Bayesian", "Random", "Hyperband", "Grid"] = "Bayesian"
    search: SearchSpace = Field(default_factory=SearchSpace)
    # Spot and checkpoints
    use_spot: bool = True
    max_wait_s: int | None = Field(None, description="default: 2 x max_run_s")
    checkpoint_s3_uri: str | None = Field(None, description="default: s3://<bucket>/<prefix>/checkpoints")
    # isolation
    network_isolation: bool = True
    subnets: list[str] = Field(default_factory=list)
    security_group_ids: list[str] = Field(default_factory=list)
    # services an account may not have (Debugger and Clarify are closed to new customers)
    debugger: ServiceMode = "auto"
    profiler: ServiceMode = "auto"
    clarify: ServiceMode = "auto"
    stream_logs: bool = True
    # hosting
    endpoint_instance_type: str = "ml.m5.xlarge"
    multi_model_instance_type: str = Field("ml.m5.xlarge", description="a CPU type: multi-model endpoints of this image run on CPU")
    transform_instance_type: str = "ml.m5.xlarge"
    clarify_instance_type: str = "ml.m5.xlarge"
    clarify_max_runtime_s: int = Field(7200, ge=60, le=777600)
    explain_method: str = Field("auto", description="the explain step's method: IMAGE_CLASSIFIER_EXPLAIN of its batch transform")
    autoscaling: AutoscalingOptions = Field(default_factory=AutoscalingOptions)  # the real-time endpoint (deploy.hosting_options)
    async_inference: AsyncOptions = Field(default_factory=AsyncOptions)  # the async step
    serverless: ServerlessOptions = Field(default_factory=ServerlessOptions)  # the serverless step
    wait_poll_s: float = Field(60.0, gt=0, description="how often a wait for a tuning job looks again (and prunes checkpoints)")
    # teardown: an endpoint SageMaker is still creating cannot be deleted until it leaves Creating
    teardown_poll_s: float = Field(15.0, gt=0, description="how often teardown re-checks such an endpoint")
    teardown_wait_s: int = Field(1800, ge=0, description="how long teardown waits for it before giving up")
    tags: dict[str, str] = Field(default_factory=dict, description="extra tags on every resource")
    # day two (deploy.day_two_options): the registry, promote's rollout, data capture, drift
    model_registry: RegistryOptions = Field(default_factory=RegistryOptions)
    rollout: RolloutOptions = Field(default_factory=RolloutOptions)
    capture: CaptureOptions = Field(default_factory=CaptureOptions)
    drift: DriftOptions = Field(default_factory=DriftOptions)
    runs_dir: Path = Path("deploy/runs")

    @field_validator("region")
    @classmethod
    def _region(cls, value: str) -> str:
        if value not in _known_regions():
            raise ValueError(f"{value!r} is not a SageMaker region (e.g. us-east-1, eu-west-1)")
        return value

    @field_validator("role_arn")
    @classmethod
    def _role(cls, value: str) -> str:
        if not _ROLE_ARN.match(value):
            raise ValueError(f"{value!r} is not an IAM role ARN (arn:aws:iam::<12-digit account>:role/<name>)")
        return value

    @field_validator("bucket")
    @classmethod
    def _bucket(cls, value: str) -> str:
        if not _BUCKET.match(value) or ".." in value:
            raise ValueError(f"{value!r} is not a valid S3 bucket name")
        return value

    @field_validator("prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        return value.strip("/")

    @field_validator("repository")
    @classmethod
    def _repository(cls, value: str) -> str:
        if not _REPOSITORY.match(value):
            raise ValueError(f"{value!r} is not a valid ECR repository name")
        return value

    @field_validator("image_tag")
    @classmethod
    def _tag(cls, value: str | None) -> str | None:
        if value is not None and not _TAG.match(value):
            raise ValueError(f"{value!r} is not an image tag (letters, digits, _ . -; at most 128 characters)")
        return value

    @field_validator("inference_ami_version")
    @classmethod
    def _ami(cls, value: str | None) -> str | None:
        allowed = enum("sagemaker", "ProductionVariantInferenceAmiVersion")
        if value is not None and value not in allowed:
            raise ValueError(f"{value!r} is not one of the service model's ProductionVariantInferenceAmiVersion: {', '.join(allowed)}")
        return value

    @field_validator(
        "train_instance_type", "endpoint_instance_type", "multi_model_instance_type", "transform_instance_type", "clarify_instance_type"
    )
    @classmethod
    def _instance_type(cls, value: str, info: Any) -> str:
        use = _INSTANCE_USES[info.field_name]
        if not instances.is_known(value, use):
            closest = instances.closest(value, use)
            hint = f"; closest: {', '.join(closest)}" if closest else " (e.g. ml.g5.xlarge, ml.m5.large)"
            raise ValueError(f"{value!r} is not a SageMaker instance type for {use} (the service model's {instances.ENUMS[use]}){hint}")
        return value

    @field_validator("kms_key_id")
    @classmethod
    def _kms(cls, value: str | None) -> str | None:
        if value is not None and not (kms.is_key_id_or_arn(value) or kms.is_alias(value)):
            raise ValueError(f"{value!r} is not a KMS key id, key ARN, alias or alias ARN")
        return value

    @field_validator("volume_kms_key_id")
    @classmethod
    def _volume_kms(cls, value: str | None) -> str | None:
        if value is not None and not kms.is_key_id_or_arn(value):
            hint = f" ({kms.describe_key_hint(value)})" if kms.is_alias(value) else ""
            raise ValueError(f"{value!r} is not a key id or key ARN, the only forms job volumes take{hint}")
        return value

    @field_validator("explain_method")
    @classmethod
    def _explain_method(cls, value: str) -> str:
        if value not in EXPLAIN_METHODS:
            raise ValueError(f"{value!r} is not an explanation method: {', '.join(EXPLAIN_METHODS)}")
        return value

    @field_validator("debugger", "profiler", "clarify", mode="before")
    @classmethod
    def _service_mode(cls, value: Any) -> Any:
        """``true``/``false`` (the old boolean switches) mean ``on``/``off``."""
        if isinstance(value, bool) or value in ("true", "false"):
            return "on" if value in (True, "true") else "off"
        return value

    @field_validator("checkpoint_s3_uri")
    @classmethod
    def _s3_uri(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith("s3://"):
            raise ValueError(f"{value!r} must be an s3:// URI")
        return value

    @field_validator("subnets", "security_group_ids")
    @classmethod
    def _vpc_ids(cls, value: list[str], info: Any) -> list[str]:
        prefix, what = ("subnet", "subnet ids") if info.field_name == "subnets" else ("sg", "security group ids")
        bad = [s for s in value if not re.match(rf"^{prefix}-[0-9a-f]{{8,17}}$", s)]
        if bad:
            raise ValueError(f"not {what}: {bad}")
        return value

    # derived values, in one place
    @property
    def early_stopping_type(self) -> str:
        return self.early_stopping or ("Off" if self.strategy == "Hyperband" else "Auto")

    @property
    def job_limit(self) -> int | None:
        """None with Grid: SageMaker runs every combination and takes no limit."""
        return None if self.strategy == "Grid" else self.max_jobs or DEFAULT_MAX_JOBS

    def volume_key(self, instance_type: str) -> str | None:
        """The volume KMS key to send for this instance type: none on local NVMe (refused there)."""
        return None if instances.has_local_nvme(instance_type) else self.volume_kms_key_id or self.kms_key_id

    def endpoint_key(self, instance_type: str) -> str | None:
        return None if instances.has_local_nvme(instance_type) else self.kms_key_id

    @property
    def s3_root(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"

    @property
    def checkpoint_uri(self) -> str:
        return self.checkpoint_s3_uri or f"{self.s3_root}/checkpoints"

    @property
    def max_wait(self) -> int | None:
        return (self.max_wait_s or 2 * self.max_run_s) if self.use_spot else None

    def repository_uri(self, account: str) -> str:
        """Where the image is pushed, without a tag: the account's ECR, or ``registry``."""
        if self.registry:
            return f"{self.registry}/{self.repository}"
        suffix = "amazonaws.com.cn" if self.region.startswith("cn-") else "amazonaws.com"
        return f"{account}.dkr.ecr.{self.region}.{suffix}/{self.repository}"


_INSTANCE_USES = {
    "train_instance_type": "training",
    "endpoint_instance_type": "hosting",
    "multi_model_instance_type": "hosting",
    "transform_instance_type": "transform",
    "clarify_instance_type": "processing",
}
_SCALARS = (str, int, float, bool, Path, type(None))


def _is_scalar(annotation: Any) -> bool:
    """str, numbers, bools, paths, Literal choices and optional ones of these: one flag each."""
    if typing.get_origin(annotation) is Literal:
        return True
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return all(_is_scalar(a) for a in typing.get_args(annotation))
    return annotation in _SCALARS


def _field_flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per scalar field (``--role-arn X`` or ``--role-arn=X``), ``--config``, and ``--set key=value`` for the rest."""
    group = parser.add_argument_group("configuration (overrides the file and IC_* variables)")
    group.add_argument("--config", type=Path, default=None, help=f"TOML file (default: {DEFAULT_CONFIG_FILE} if present)")
    for name, field in DeployConfig.model_fields.items():
        if _is_scalar(field.annotation):
            group.add_argument(_field_flag(name), dest=f"cfg_{name}", default=None, help=field.description)
    group.add_argument("--set", dest="cfg_set", action="append", default=[], metavar="KEY=VALUE", help="any field, value as JSON or text")


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _coerce(name: str, text: str) -> Any:
    """Text fields stay text (an image tag ``2024`` is not a number); the rest parse as JSON."""
    field = DeployConfig.model_fields.get(name)
    if field is not None and field.annotation in (str, str | None, Path):
        return text
    return _parse_value(text)


def _refused(cfg: DeployConfig, source: str) -> None:
    """The cross-field rules, reported like the field errors: one line per field."""
    refused = refusals.config_refusals(cfg)
    if refused:
        raise ConfigError("\n".join([f"invalid deploy configuration ({source}):", *(f"  {r}" for r in refused)]))


def _set_path(values: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = values
    for key in parents:
        node = node.setdefault(key, {})
    node[leaf] = value


def _format(error: ValidationError, source: str) -> str:
    lines = [f"invalid deploy configuration ({source}):"]
    for item in error.errors():
        field = ".".join(str(p) for p in item["loc"]) or "(config)"
        message = item["msg"].removeprefix("Value error, ")
        lines.append(f"  {field}: {message}")
    return "\n".join(lines)


def load_config(
    path: Path | None = None,
    *,
    environ: dict[str, str] | None = None,
    overrides: dict[str, Any] | None = None,
) -> DeployConfig:
    """File, then ``IC_*`` variables, then explicit overrides; raises ConfigError naming each bad field."""
    environ = dict(os.environ) if environ is None else environ
    values: dict[str, Any] = {}
    file = path or (DEFAULT_CONFIG_FILE if DEFAULT_CONFIG_FILE.is_file() else None)
    if path is not None and not path.is_file():
        raise ConfigError(f"config file {path} not found (copy deploy/config.example.toml)")
    if file is not None:
        try:
            values.update(tomllib.loads(file.read_text()))
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {file}: {exc}") from exc
    for name in DeployConfig.model_fields:
        key = ENV_PREFIX + name.upper()
        if key in environ:
            values[name] = _coerce(name, environ[key])
    for dotted, value in (overrides or {}).items():
        _set_path(values, dotted, value)
    source = str(file) if file else "flags and environment"
    try:
        cfg = DeployConfig.model_validate(values)
    except ValidationError as exc:
        raise ConfigError(_format(exc, source)) from None
    _refused(cfg, source)
    return cfg


def from_args(args: argparse.Namespace) -> DeployConfig:
    overrides: dict[str, Any] = {}
    for name in DeployConfig.model_fields:
        value = getattr(args, f"cfg_{name}", None)
        if value is not None:
            overrides[name] = _coerce(name, value)
    for item in args.cfg_set:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--set expects KEY=VALUE, got {item!r}")
        overrides[key.strip()] = _coerce(key.strip(), value)
    return load_config(args.config, overrides=overrides)


def get_args(argv: list[str]) -> DeployConfig:
    """The configuration from config flags alone (the shell script checks it before building)."""
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)  # the pipeline's --data is not --data-format
    add_arguments(parser)
    args, _ = parser.parse_known_args(argv)
    try:
        return from_args(args)
    except ConfigError as exc:
        raise SystemExit(f"error: {exc}") from None
