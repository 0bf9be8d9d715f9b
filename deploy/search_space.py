"""The tuning job's search space: ranges and categorical values of the trainer's own hyperparameters.

Checked as SageMaker checks them (a categorical range takes at most 30 values; ranges need
0 < low < high), so that a bad space fails with its field's name before anything is sent.

The learning rate is searched as ``lr_scale``, a factor on the rate the trainer's rule gives for each
trial's batch size, freeze and data (``image_classifier.defaults``): an absolute range cannot be centred
on a rate that moves with the batch (sqrt scaling) and the freeze (x3), a factor can, so a 12-trial
search spends its trials around the measured good region instead of across two decades.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

MAX_CATEGORICAL_VALUES = 30  # CategoricalParameterRange.Values in the service model
# the rule's rate was the best grid point or within 2 points of it on every measured set, and the grid's
# neighbours (x1/3, x3) lost up to 20 points: a decade around it covers the good region (docs/training.md)
LR_SCALE_RANGE = (0.3, 3.0)
REPLACED = {
    "lr": "lr_scale",
    "lr_values": "lr_scale_values",
}


class SearchSpace(BaseModel):
    """Hyperparameter ranges of the tuning job (names are the trainer's own hyperparameters)."""

    model_config = ConfigDict(extra="forbid")

    lr_scale: tuple[float, float] = LR_SCALE_RANGE  # a factor on the rule's learning rate, log scale
    lr_scale_values: list[float] = Field(default_factory=list, description="categorical instead of the range (Grid needs it)")
    weight_decay: tuple[float, float] = (1e-6, 1e-2)
    weight_decay_values: list[float] = Field(default_factory=list, description="categorical instead of the range (Grid needs it)")
    batch_size: list[int] = [32, 64, 128]
    freeze: list[str] = ["head", "last:2", "none"]
    models: list[str] = Field(default_factory=list, description="also search the backbone; empty: the config's model only")

    @model_validator(mode="before")
    @classmethod
    def _replaced(cls, data: Any) -> Any:
        """A config written for the absolute range gets the way forward, not "extra fields not permitted"."""
        old = sorted(k for k in REPLACED if isinstance(data, dict) and k in data)
        if old:
            raise ValueError(
                f"{', '.join(old)}: the tuning job now searches lr_scale, a factor on the learning rate the trainer's "
                f"rule gives each trial (docs/training.md#defaults); write {', '.join(REPLACED[k] for k in old)} "
                f"(default {list(LR_SCALE_RANGE)}), or set hyperparameters.lr to search around your own rate"
            )
        return data

    @field_validator("lr_scale", "weight_decay")
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

    @field_validator("lr_scale_values", "weight_decay_values", "batch_size", "freeze", "models")
    @classmethod
    def _categorical(cls, value: list) -> list:
        if len(value) > MAX_CATEGORICAL_VALUES:
            raise ValueError(f"{len(value)} values; SageMaker takes at most {MAX_CATEGORICAL_VALUES} per categorical range")
        if any(isinstance(v, float) and v <= 0 for v in value):
            raise ValueError(f"values must be > 0, got {value}")
        return value
