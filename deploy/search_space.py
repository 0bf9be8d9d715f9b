"""The tuning job's search space: ranges and categorical values of the trainer's own hyperparameters.

Checked as SageMaker checks them (a categorical range takes at most 30 values; ranges need
0 < low < high), so that a bad space fails with its field's name before anything is sent.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator

MAX_CATEGORICAL_VALUES = 30  # CategoricalParameterRange.Values in the service model


class SearchSpace(BaseModel):
    """Hyperparameter ranges of the tuning job (names are the trainer's own hyperparameters)."""

    model_config = ConfigDict(extra="forbid")

    lr: tuple[float, float] = (1e-4, 1e-2)
    lr_values: list[float] = Field(default_factory=list, description="categorical instead of the range (Grid needs it)")
    weight_decay: tuple[float, float] = (1e-6, 1e-2)
    weight_decay_values: list[float] = Field(default_factory=list, description="categorical instead of the range (Grid needs it)")
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

    @field_validator("lr_values", "weight_decay_values", "batch_size", "freeze", "models")
    @classmethod
    def _categorical(cls, value: list) -> list:
        if len(value) > MAX_CATEGORICAL_VALUES:
            raise ValueError(f"{len(value)} values; SageMaker takes at most {MAX_CATEGORICAL_VALUES} per categorical range")
        if any(isinstance(v, float) and v <= 0 for v in value):
            raise ValueError(f"values must be > 0, got {value}")
        return value
