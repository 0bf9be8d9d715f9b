"""The configuration-time refusals: what SageMaker refuses of a configuration, said before anything is built.

``config_refusals(cfg)`` runs whenever a configuration is loaded (``deploy.config.load_config``), so a
bad combination fails with the field's name; ``plan_refusals(cfg, steps)`` adds the rules that depend
on the steps a run takes (``deploy.pipeline``). The option models (``deploy.config``,
``deploy.hosting_options``) hold the limits; the request rules (``deploy.rules``) apply the same
rules, with the same messages, to each request as sent. This module imports neither of them
back, so the three form no circle.

docs/aws.md lists every rule with the message it prints.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from deploy import gpu_hosts, hosting_options, kms
from deploy.hosting_options import (
    ASYNC_MAX_PAYLOAD_MB,
    ASYNC_MAX_TIMEOUT_S,
    SERVERLESS_MAX_PAYLOAD_MB,
    SERVERLESS_MAX_TIMEOUT_S,
    SERVERLESS_MEMORY_MB,
)
from deploy.instances import has_local_nvme, is_accelerated
from image_classifier.params import MAX_PAYLOAD_CEILING_MB

if TYPE_CHECKING:
    from deploy.config import DeployConfig

HYPERBAND_AUTO = (
    'Hyperband stops unpromising trials itself; SageMaker refuses it with early stopping Auto: set early_stopping = "Off" or leave it unset'
)
GRID_CONTINUOUS = "Grid search takes categorical ranges only; {names} {verb} continuous: list the values to try in {fields}"
GRID_LIMIT = "Grid search runs every combination of the categorical values and takes no job limit: remove max_jobs"
MULTI_MODEL_GPU = (
    "{value!r} is accelerated; multi-model endpoints of a multi-model-server container run on CPU instance types only "
    "(GPU multi-model endpoints need Triton): choose e.g. ml.m5.xlarge or ml.c5.2xlarge"
)
VOLUME_KEY_ALIAS = (
    "{key!r} is an alias; the volume KMS key of training, tuning and processing jobs takes a key id or key ARN only "
    "({types} {verb} EBS volumes): set volume_kms_key_id to the key's ARN ({hint})"
)


@dataclass(frozen=True)
class Refusal:
    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"


def _plural(names: list[str]) -> str:
    return "are" if len(names) > 1 else "is"


def config_refusals(cfg: DeployConfig) -> list[Refusal]:
    """Every cross-field rule the configuration breaks (field-level checks live on the fields)."""
    out: list[Refusal] = []
    if bool(cfg.subnets) != bool(cfg.security_group_ids):
        out.append(Refusal("subnets", "subnets and security_group_ids go together: set both or neither"))
    if cfg.use_spot and cfg.max_wait_s is not None and cfg.max_wait_s < cfg.max_run_s:
        out.append(Refusal("max_wait_s", f"max_wait_s ({cfg.max_wait_s}) must be >= max_run_s ({cfg.max_run_s}) with Spot"))
    if cfg.strategy == "Hyperband" and cfg.early_stopping == "Auto":
        out.append(Refusal("early_stopping", HYPERBAND_AUTO))
    if cfg.strategy == "Grid":
        continuous = [name for name in ("lr_scale", "weight_decay") if not getattr(cfg.search, f"{name}_values")]
        if continuous:
            fields = " and ".join(f"search.{name}_values" for name in continuous)
            out.append(Refusal("search", GRID_CONTINUOUS.format(names=" and ".join(continuous), verb=_plural(continuous), fields=fields)))
        if cfg.max_jobs is not None:
            out.append(Refusal("max_jobs", GRID_LIMIT))
    elif cfg.job_limit is not None and cfg.max_parallel_jobs > cfg.job_limit:
        out.append(Refusal("max_parallel_jobs", f"max_parallel_jobs ({cfg.max_parallel_jobs}) exceeds max_jobs ({cfg.job_limit})"))
    volume_key = cfg.volume_kms_key_id or cfg.kms_key_id
    if volume_key and kms.is_alias(volume_key):
        with_ebs = [name for name in ("train_instance_type", "clarify_instance_type") if not has_local_nvme(getattr(cfg, name))]
        if with_ebs:
            types = ", ".join(f"{name}={getattr(cfg, name)}" for name in with_ebs)
            message = VOLUME_KEY_ALIAS.format(
                key=volume_key, types=types, verb="have" if len(with_ebs) > 1 else "has", hint=kms.describe_key_hint(volume_key)
            )
            out.append(Refusal("kms_key_id", message))
    if is_accelerated(cfg.multi_model_instance_type):
        out.append(Refusal("multi_model_instance_type", MULTI_MODEL_GPU.format(value=cfg.multi_model_instance_type)))
    return out + _gpu_refusals(cfg) + _hosting_refusals(cfg)


def _gpu_refusals(cfg: DeployConfig) -> list[Refusal]:
    """The GPU hosts the image cannot run on (``deploy.gpu_hosts``; docs/image.md, "GPU drivers")."""
    out = []
    for name in ("train_instance_type", "endpoint_instance_type", "transform_instance_type"):
        if reason := gpu_hosts.never(getattr(cfg, name)):
            out.append(Refusal(name, reason))
    if reason := gpu_hosts.transform_problem(cfg.transform_instance_type, cfg.image_cuda_compat):
        out.append(Refusal("transform_instance_type", reason))
    if cfg.inference_ami_version and (reason := gpu_hosts.ami_problem(cfg.inference_ami_version, cfg.image_cuda_compat)):
        out.append(Refusal("inference_ami_version", reason))
    return out


def plan_refusals(cfg: DeployConfig, steps: list[str]) -> list[Refusal]:
    """Rules that hold only for the steps a run takes (the async and serverless ones below)."""
    out = _hosting_plan_refusals(cfg, steps)
    if "clarify" in steps and gpu_hosts.is_nvidia(cfg.endpoint_instance_type):
        message = (
            f"{cfg.endpoint_instance_type!r} is a GPU: Clarify's shadow endpoint takes no InferenceAmiVersion, and SageMaker's "
            "default GPU host drivers cannot run the image's CUDA 13 build: run the clarify step with a CPU type "
            "(--endpoint-instance-type ml.m5.xlarge)"
        )
        out.append(Refusal("endpoint_instance_type", message))
    return out


def _hosting_refusals(cfg: DeployConfig) -> list[Refusal]:
    """The hosting options, whatever the steps: bounds that tie fields together."""
    out = []
    for name, options in (("autoscaling", cfg.autoscaling), ("async_inference", cfg.async_inference)):
        if options.min_instances > options.max_instances:
            out.append(Refusal(f"{name}.min_instances", f"{options.min_instances} is above max_instances ({options.max_instances})"))
    if reason := gpu_hosts.never(cfg.async_inference.instance_type):
        out.append(Refusal("async_inference.instance_type", reason))
    return out


def _hosting_plan_refusals(cfg: DeployConfig, steps: list[str]) -> list[Refusal]:
    """What the async and serverless steps cannot do with this configuration."""
    out = []
    if "async" in steps:
        out += _async(cfg.async_inference)
    if "serverless" in steps:
        out += _serverless(cfg)
    return out


def _async(options: hosting_options.AsyncOptions) -> list[Refusal]:
    out = []
    if options.max_payload_mb > MAX_PAYLOAD_CEILING_MB:
        limit = "SageMaker's 1 GB" if options.max_payload_mb > ASYNC_MAX_PAYLOAD_MB else "the container's measured ceiling"
        out.append(
            Refusal(
                "async_inference.max_payload_mb",
                f"{options.max_payload_mb} MB is above {limit}: the container handles at most {MAX_PAYLOAD_CEILING_MB} MB "
                "(docs/serving.md#limits): send larger images smaller, or split them",
            )
        )
    if options.timeout_s > ASYNC_MAX_TIMEOUT_S:
        out.append(
            Refusal("async_inference.timeout_s", f"{options.timeout_s} s: an asynchronous invocation takes at most {ASYNC_MAX_TIMEOUT_S} s")
        )
    return out


def _serverless(cfg: DeployConfig) -> list[Refusal]:
    options, out = cfg.serverless, []
    if options.memory_mb not in SERVERLESS_MEMORY_MB:
        sizes = ", ".join(map(str, SERVERLESS_MEMORY_MB))
        out.append(Refusal("serverless.memory_mb", f"{options.memory_mb}: serverless endpoints take {sizes} MB (at most 6 GB)"))
    if options.max_payload_mb > SERVERLESS_MAX_PAYLOAD_MB:
        out.append(
            Refusal(
                "serverless.max_payload_mb",
                f"{options.max_payload_mb} MB: a serverless endpoint takes at most {SERVERLESS_MAX_PAYLOAD_MB} MB per request",
            )
        )
    if options.timeout_s > SERVERLESS_MAX_TIMEOUT_S:
        out.append(Refusal("serverless.timeout_s", f"{options.timeout_s} s: a serverless request ends after {SERVERLESS_MAX_TIMEOUT_S} s"))
    if cfg.subnets:
        out.append(
            Refusal(
                "subnets",
                "serverless endpoints run outside your VPC (SageMaker refuses a VpcConfig): run the serverless step without subnets and security_group_ids",
            )
        )
    return out
