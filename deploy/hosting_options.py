"""The hosting options after real-time: asynchronous and serverless endpoints, and autoscaling.

Three tables of the configuration (``[async_inference]``, ``[serverless]``, ``[autoscaling]``; flags as
``--set serverless.memory_mb=2048``), and what SageMaker refuses of them, checked before anything is
sent (``deploy.refusals``, for the steps that use them). The limits (AWS's "Hosting
limits", docs/aws.md): asynchronous payloads up to 1 GB and invocations up to an hour, but no more than
the container is measured to take (``MAX_PAYLOAD_CEILING_MB``); serverless endpoints run on CPU only,
with 1-6 GB of memory, images up to 10 GB, no VPC, no network isolation, no multi-model, 4 MB payloads
and 60 s requests.
"""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from deploy import instances
from image_classifier.params import MAX_PAYLOAD_CEILING_MB, MAX_PAYLOAD_ENV, REALTIME_MAX_PAYLOAD_MB, TIMEOUT_ENV

ASYNC_MAX_PAYLOAD_MB = 1024  # SageMaker's asynchronous payload limit (1 GB)
ASYNC_MAX_TIMEOUT_S = 3600  # InvocationTimeoutSeconds
SERVERLESS_MEMORY_MB = (1024, 2048, 3072, 4096, 5120, 6144)
SERVERLESS_MAX_PAYLOAD_MB = 4
SERVERLESS_MAX_TIMEOUT_S = 60
SERVERLESS_MAX_IMAGE_BYTES = 10 * 1024**3
_SNS_TOPIC = re.compile(r"^arn:aws[a-z-]*:sns:[a-z0-9-]+:\d{12}:[\w-]{1,256}$")


class AsyncOptions(BaseModel):
    """An asynchronous endpoint: requests read from S3, answers written to S3, scaled to zero when idle."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    instance_type: str = "ml.m5.xlarge"
    max_concurrent_invocations: int = Field(default=1, ge=1, le=1000, description="per instance (MaxConcurrentInvocationsPerInstance)")
    max_payload_mb: int = Field(default=MAX_PAYLOAD_CEILING_MB, ge=1, description="the container's SAGEMAKER_MAX_PAYLOAD_IN_MB")
    timeout_s: int = Field(default=900, ge=1, description="per invocation (InvocationTimeoutSeconds, the model server's timeout)")
    success_topic: str | None = Field(default=None, description="SNS topic ARN told of each answer")
    error_topic: str | None = Field(default=None, description="SNS topic ARN told of each failure")
    min_instances: int = Field(default=0, ge=0, description="0: scale to zero when the queue is empty")
    max_instances: int = Field(default=2, ge=1)
    backlog_per_instance: float = Field(default=5.0, gt=0, description="target of ApproximateBacklogSizePerInstance")
    scale_in_cooldown_s: int = Field(default=600, ge=0)
    scale_out_cooldown_s: int = Field(default=120, ge=0)
    wait_s: int = Field(default=900, ge=1, description="how long the query waits for the answer in S3")
    poll_s: float = Field(default=5.0, gt=0)

    @field_validator("instance_type")
    @classmethod
    def _instance_type(cls, value: str) -> str:
        if not instances.is_known(value, "hosting"):
            raise ValueError(
                f"{value!r} is not a SageMaker instance type for hosting; closest: {', '.join(instances.closest(value, 'hosting'))}"
            )
        return value

    @field_validator("success_topic", "error_topic")
    @classmethod
    def _topic(cls, value: str | None) -> str | None:
        if value is not None and not _SNS_TOPIC.match(value):
            raise ValueError(f"{value!r} is not an SNS topic ARN (arn:aws:sns:<region>:<account>:<topic>)")
        return value


class ServerlessOptions(BaseModel):
    """A serverless endpoint: CPU only, billed per request, no instance to manage."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    memory_mb: int = Field(default=3072, description=f"one of {', '.join(map(str, SERVERLESS_MEMORY_MB))}")
    max_concurrency: int = Field(default=5, ge=1, le=200)
    max_payload_mb: int = Field(default=SERVERLESS_MAX_PAYLOAD_MB, ge=1)
    timeout_s: int = Field(default=SERVERLESS_MAX_TIMEOUT_S, ge=1)
    image_uri: str | None = Field(default=None, description="the CPU-only build of the image (docs/image.md); default: the run's image")

    @model_validator(mode="before")
    @classmethod
    def _cpu_only(cls, data: object) -> object:
        """An instance or accelerator type here would be a GPU wish: say why there is none, not just "extra field"."""
        if isinstance(data, dict) and (asked := sorted({"instance_type", "accelerator_type", "instance_count"} & set(data))):
            raise ValueError(
                f"{', '.join(asked)}: a serverless endpoint has no instances of yours and runs on CPU only (no GPU); "
                "for a GPU use the deploy or async step"
            )
        return data


class AutoscalingOptions(BaseModel):
    """The real-time endpoint's instance count, tracking invocations per instance (off while max_instances = min_instances)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    min_instances: int = Field(default=1, ge=1)
    max_instances: int = Field(default=1, ge=1, description="> min_instances turns autoscaling on")
    invocations_per_instance: float = Field(
        default=200.0, gt=0, description="target of SageMakerVariantInvocationsPerInstance (per minute)"
    )
    scale_in_cooldown_s: int = Field(default=300, ge=0)
    scale_out_cooldown_s: int = Field(default=60, ge=0)

    @property
    def enabled(self) -> bool:
        return self.max_instances > self.min_instances


def serverless_image_problem(image_uri: str, size_bytes: int | None) -> str | None:
    """Serverless takes images up to 10 GB; ECR's size is the compressed one, so this is a lower bound of the real size."""
    if size_bytes is not None and size_bytes > SERVERLESS_MAX_IMAGE_BYTES:
        return (
            f"{image_uri} is {size_bytes / 1024**3:.1f} GB in ECR; serverless endpoints take images up to 10 GB: push the "
            "CPU-only build (docker build --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu) and set serverless.image_uri"
        )
    return None


def async_environment(options: AsyncOptions) -> dict[str, str]:
    """The container's limits for asynchronous requests (docs/serving.md#limits)."""
    return {MAX_PAYLOAD_ENV: str(options.max_payload_mb), TIMEOUT_ENV: str(options.timeout_s)}


def serverless_environment(options: ServerlessOptions) -> dict[str, str]:
    return {MAX_PAYLOAD_ENV: str(min(options.max_payload_mb, REALTIME_MAX_PAYLOAD_MB)), TIMEOUT_ENV: str(options.timeout_s)}
