"""The configuration of day two: the model registry, the guarded rollout, data capture and drift.

Each table has its own section in the TOML file (``[model_registry]``, ``[rollout]``, ``[capture]``,
``[drift]``) and its bounds here, so a value AWS would refuse fails when the configuration loads.
docs/aws.md ("Day two") says what each one does.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

# CloudWatch: an EMF line reaches its metric within about two minutes, and an alarm judges one
# period after that; a bake shorter than this could end before a bad fleet's first datapoint.
METRICS_INGESTION_DELAY_S = 120


class RegistryOptions(BaseModel):
    """The model package group every final model of a run is registered in."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    group: str = Field(default="image-classifier", pattern=r"^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}$", description="the model package group")
    approval: Literal["PendingManualApproval", "Approved"] = Field(
        default="PendingManualApproval", description="the status a new version gets (approve --version N changes it)"
    )


class RolloutOptions(BaseModel):
    """How ``promote`` rolls a version onto an endpoint (blue/green, SageMaker's deployment guardrails)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    instance_count: int = Field(default=1, ge=1, le=100, description="instances of a new endpoint (an existing one keeps its count)")
    canary_percent: int = Field(default=25, ge=1, le=50, description="share of the fleet that takes traffic first (canary, >= 2 instances)")
    bake_s: int = Field(default=600, ge=0, le=3600, description="how long the new fleet serves under the alarms before the rest moves")
    max_execution_s: int = Field(default=3600, ge=600, le=28800, description="the whole rollout, at most")
    alarm_period_s: int = Field(default=60, ge=10, le=3600, description="CloudWatch period of the rollback alarms")
    evaluation_periods: int = Field(default=1, ge=1, le=10)
    error_threshold: float = Field(default=1.0, ge=0, description="5xx errors (container and SageMaker) in one period that roll back")
    p99_latency_ms: float = Field(default=2000.0, gt=0, description="p99 latency of the new version that rolls back")
    poll_s: float = Field(default=30.0, gt=0, description="how often promote looks at the endpoint during the rollout")

    @model_validator(mode="after")
    def _bake_covers_ingestion(self) -> RolloutOptions:
        needed = METRICS_INGESTION_DELAY_S + self.alarm_period_s * self.evaluation_periods
        if self.bake_s < needed:
            raise ValueError(
                f"bake_s ({self.bake_s}) must be at least {needed} s: the metrics' ingestion delay ({METRICS_INGESTION_DELAY_S} s) plus "
                f"alarm_period_s x evaluation_periods ({self.alarm_period_s} x {self.evaluation_periods}), or the bake ends before "
                "an alarm can see the new version"
            )
        if self.bake_s >= self.max_execution_s:
            raise ValueError(f"bake_s ({self.bake_s}) must be shorter than max_execution_s ({self.max_execution_s})")
        return self


class CaptureOptions(BaseModel):
    """Endpoint data capture of the endpoints ``deploy`` and ``promote`` create (S3, the run's KMS key)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = Field(default=True, description="capture requests and answers of the endpoints the pipeline creates or promotes")
    sampling_percent: int = Field(default=20, ge=0, le=100, description="share of requests captured (SageMaker: 0-100)")


class DriftOptions(BaseModel):
    """``drift``: how much captured traffic to read and when to fail."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    threshold: float = Field(
        default=0.25, gt=0, le=1, description="total variation distance of predicted classes above which drift exits 3"
    )
    max_records: int = Field(default=5000, ge=1, le=1_000_000, description="newest captured requests read")
