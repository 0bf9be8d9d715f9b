"""One validated configuration for every AWS step, checked before any request is sent.

Sources, later ones win: the TOML file (``deploy/config.toml``; ``deploy/config.example.toml``
documents every field), environment variables ``IC_<FIELD>`` (e.g. ``IC_REGION``), then command
line flags (``--region``, ``--role-arn`` ...). A bad value fails with the field's name, so a
typo in an instance type costs nothing instead of a failed job twenty minutes in.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

ENV_PREFIX = "IC_"
DEFAULT_CONFIG_FILE = Path(__file__).with_name("config.toml")

_ROLE_ARN = re.compile(r"^arn:aws(-cn|-us-gov)?:iam::\d{12}:role/[\w+=,.@/-]{1,512}$")
_INSTANCE_TYPE = re.compile(r"^ml\.[a-z][a-z0-9-]*\.([0-9]+)?(nano|micro|small|medium|large|xlarge)$")
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_KMS_KEY = re.compile(r"^(arn:aws(-cn|-us-gov)?:kms:[a-z0-9-]+:\d{12}:(key|alias)/[\w/-]+|alias/[\w/-]+|[0-9a-f-]{36})$")
_REPOSITORY = re.compile(r"^[a-z0-9]+([._/-][a-z0-9]+)*$")


class ConfigError(ValueError):
    """A configuration problem, named by field; raised before any AWS call."""


def _known_regions() -> set[str]:
    import boto3

    session = boto3.session.Session()
    return {region for partition in ("aws", "aws-cn", "aws-us-gov") for region in session.get_available_regions("sagemaker", partition)}


class SearchSpace(BaseModel):
    """Hyperparameter ranges of the tuning job (names are the trainer's own hyperparameters)."""

    model_config = ConfigDict(extra="forbid")

    lr: tuple[float, float] = (1e-4, 1e-2)
    weight_decay: tuple[float, float] = (1e-6, 1e-2)
    batch_size: list[int] = [32, 64, 128]
    freeze: list[str] = ["head", "last:2", "none"]
    models: list[str] = Field(default_factory=list, description="also search the backbone; empty: the config's model only")

    @field_validator("lr", "weight_decay")
    @classmethod
    def _range(cls, value: tuple[float, float]) -> tuple[float, float]:
        low, high = value
        if not 0 < low < high:
            raise ValueError(f"need 0 < low < high, got {list(value)}")
        return value

    @field_validator("batch_size", "freeze")
    @classmethod
    def _non_empty(cls, value: list) -> list:
        if not value:
            raise ValueError("needs at least one value")
        return value


class DeployConfig(BaseModel):
    """Everything the pipeline needs to know about the account and the run."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # account and storage
    region: str
    role_arn: str
    bucket: str
    prefix: str = "image-classifier"
    kms_key_id: str | None = None
    # the image
    repository: str = "image-classifier"
    image_tag: str = "latest"
    image_uri: str | None = Field(None, description="default: <account>.dkr.ecr.<region>.amazonaws.com/<repository>:<image_tag>")
    registry: str | None = Field(None, description="push to this registry host instead of the account's ECR (mirrors, tests)")
    # training
    model: str = "resnet50"
    train_instance_type: str = "ml.g5.xlarge"
    train_instance_count: int = Field(1, ge=1, le=64)
    train_volume_gb: int = Field(50, ge=1, le=16384)
    max_run_s: int = Field(6 * 3600, ge=60)
    tuning_epochs: int = Field(8, ge=1)
    final_epochs: int = Field(15, ge=1)
    hyperparameters: dict[str, str] = Field(default_factory=dict, description="static hyperparameters for every job")
    # tuning
    max_jobs: int = Field(12, ge=1, le=500)
    max_parallel_jobs: int = Field(3, ge=1, le=100)
    early_stopping: Literal["Auto", "Off"] = "Auto"
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
    # debugger and profiler (SageMaker Debugger is closed to new accounts since 2026-07-30)
    debugger: bool = True
    profiler: bool = True
    stream_logs: bool = True
    # hosting
    endpoint_instance_type: str = "ml.m5.xlarge"
    transform_instance_type: str = "ml.m5.xlarge"
    clarify_instance_type: str = "ml.m5.xlarge"
    tags: dict[str, str] = Field(default_factory=dict, description="extra tags on every resource")
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

    @field_validator("train_instance_type", "endpoint_instance_type", "transform_instance_type", "clarify_instance_type")
    @classmethod
    def _instance_type(cls, value: str) -> str:
        if not _INSTANCE_TYPE.match(value):
            raise ValueError(f"{value!r} is not a SageMaker instance type (e.g. ml.g5.xlarge, ml.m5.large)")
        return value

    @field_validator("kms_key_id")
    @classmethod
    def _kms(cls, value: str | None) -> str | None:
        if value is not None and not _KMS_KEY.match(value):
            raise ValueError(f"{value!r} is not a KMS key id, key ARN or alias")
        return value

    @field_validator("checkpoint_s3_uri")
    @classmethod
    def _s3_uri(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith("s3://"):
            raise ValueError(f"{value!r} must be an s3:// URI")
        return value

    @field_validator("subnets")
    @classmethod
    def _subnets(cls, value: list[str]) -> list[str]:
        bad = [s for s in value if not re.match(r"^subnet-[0-9a-f]{8,17}$", s)]
        if bad:
            raise ValueError(f"not subnet ids: {bad}")
        return value

    @field_validator("security_group_ids")
    @classmethod
    def _groups(cls, value: list[str]) -> list[str]:
        bad = [s for s in value if not re.match(r"^sg-[0-9a-f]{8,17}$", s)]
        if bad:
            raise ValueError(f"not security group ids: {bad}")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> DeployConfig:
        if bool(self.subnets) != bool(self.security_group_ids):
            raise ValueError("subnets and security_group_ids go together: set both or neither")
        if self.max_parallel_jobs > self.max_jobs:
            raise ValueError(f"max_parallel_jobs ({self.max_parallel_jobs}) exceeds max_jobs ({self.max_jobs})")
        if self.use_spot and self.max_wait_s is not None and self.max_wait_s < self.max_run_s:
            raise ValueError(f"max_wait_s ({self.max_wait_s}) must be >= max_run_s ({self.max_run_s}) with Spot")
        return self

    # derived values, in one place
    @property
    def s3_root(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"

    @property
    def checkpoint_uri(self) -> str:
        return self.checkpoint_s3_uri or f"{self.s3_root}/checkpoints"

    @property
    def max_wait(self) -> int | None:
        return (self.max_wait_s or 2 * self.max_run_s) if self.use_spot else None

    def image(self, account: str) -> str:
        if self.image_uri:
            return self.image_uri
        if self.registry:
            return f"{self.registry}/{self.repository}:{self.image_tag}"
        suffix = "amazonaws.com.cn" if self.region.startswith("cn-") else "amazonaws.com"
        return f"{account}.dkr.ecr.{self.region}.{suffix}/{self.repository}:{self.image_tag}"


def _field_flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per scalar field (``--role-arn``), plus ``--config`` and ``--set key=value`` for the rest."""
    group = parser.add_argument_group("configuration (overrides the file and IC_* variables)")
    group.add_argument("--config", type=Path, default=None, help=f"TOML file (default: {DEFAULT_CONFIG_FILE} if present)")
    for name, field in DeployConfig.model_fields.items():
        if field.annotation in (str, int, bool, str | None, int | None, Path):
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
    try:
        return DeployConfig.model_validate(values)
    except ValidationError as exc:
        raise ConfigError(_format(exc, str(file) if file else "flags and environment")) from None


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
    parser = argparse.ArgumentParser(add_help=False)
    add_arguments(parser)
    args, _ = parser.parse_known_args(argv)
    try:
        return from_args(args)
    except ConfigError as exc:
        raise SystemExit(f"error: {exc}") from None
