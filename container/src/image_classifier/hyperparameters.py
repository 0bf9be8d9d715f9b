"""Typed, validated hyperparameters.

SageMaker delivers every hyperparameter as a string (the SDK's framework estimators even
JSON-encode them, so ``"resnet50"`` may arrive as ``"\\"resnet50\\""``). pydantic turns them
into typed values; an unknown name or a malformed value fails the job with a reason that names
it. Keys SageMaker itself injects (``sagemaker_*``, ``_tuning_objective_metric``) are ignored;
any other key starting with ``_`` is refused with the reason.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from image_classifier.errors import UserError

_FREEZE = re.compile(r"^(none|head|last:\d+)$")
# Keys SageMaker and the SDK add: every ``sagemaker_*`` (the SDK adds new ones; script mode reads
# ``sagemaker_program``) and the tuning job's ``_tuning_objective_metric``. Any other ``_`` key is
# refused, so that a mistyped ``_lr`` fails the job instead of vanishing.
SERVICE_PREFIX = "sagemaker_"
SERVICE_KEYS = frozenset({"_tuning_objective_metric"})


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    @classmethod
    def title(cls) -> str:
        """The argument group's name: ``OptimisationSection`` -> ``optimisation``."""
        return cls.__name__.removesuffix("Section").lower()


class ModelSection(_Section):
    """The backbone, its weights and what of it trains."""

    model: str = Field("resnet50", description="timm model name, or torchvision/<name>")
    pretrained: bool = True
    image_size: int | None = Field(None, ge=16, le=1024, description="default: the model's own")
    freeze: str = Field(
        "none", description="none (full fine-tune) | head (train the head only) | last:N (train the last N stages and the head)"
    )


class OptimisationSection(_Section):
    """The optimizer, the learning-rate schedule, regularisation, seeding."""

    epochs: int = Field(10, ge=1, le=10_000, description="by the rule when not given (image_classifier/defaults.py)")
    batch_size: int = Field(32, ge=1, le=4096)
    optimizer: Literal["adamw", "sgd"] = "adamw"
    lr: float = Field(3e-3, ge=0.0, le=100.0, description="the head's learning rate; by the rule when not given")
    lr_scale: float = Field(
        1.0, gt=0.0, le=100.0, description="multiplies lr, given or by the rule (the tuning job searches it around the rule)"
    )
    backbone_lr_mult: float = Field(
        0.3, ge=0.0, le=10.0, description="backbone lr = lr * this when fine-tuning; by the rule when not given"
    )
    weight_decay: float = Field(1e-4, ge=0.0, le=10.0)
    momentum: float = Field(0.9, ge=0.0, lt=1.0)
    scheduler: Literal["cosine", "step", "constant"] = "cosine"
    warmup_epochs: float = Field(0.0, ge=0.0, description="linear warm-up; by the rule when not given")
    step_size: int = Field(10, ge=1, description="epochs between decays (step scheduler)")
    gamma: float = Field(0.1, gt=0.0, le=1.0)
    label_smoothing: float = Field(0.1, ge=0.0, lt=1.0, description="by the rule when not given")
    clip_grad_norm: float = Field(0.0, ge=0.0, description="0 disables clipping")
    early_stopping_patience: int = Field(0, ge=0, description="epochs without validation gain; 0 disables")
    seed: int = 42
    deterministic: bool = False


class DataSection(_Section):
    """Augmentation, loading, unreadable files, the decoded-image cache."""

    augment: Literal["standard", "light", "none"] = Field("standard", description="by the rule when not given")
    num_workers: int | None = Field(None, ge=0, le=64, description="default: one per CPU, at most 8")
    max_bad_fraction: float = Field(0.05, ge=0.0, le=1.0, description="fail above this share of unreadable images")
    cache_images: Literal["auto", "none", "memory", "disk"] = Field(
        "auto",
        description="keep decoded, resized train/validation images between epochs: memory, disk (a memory-mapped file), none; "
        "auto = memory if it fits in a quarter of free RAM, else disk if it fits in half the free disk, else none "
        "(none when the feature cache runs or there is one epoch)",
    )


class SpeedSection(_Section):
    """How fast it runs; none of these changes what is learnt (except amp's rounding)."""

    amp: Literal["auto", "off", "bf16", "fp16"] = "auto"
    channels_last: bool = True
    compile: bool = False
    processes_per_host: int | None = Field(None, ge=1, le=64, description="default: one per GPU, else 1")
    feature_cache: Literal["auto", "off"] = Field(
        "auto",
        description="auto: with freeze=head and augment=none, run the frozen backbone once and train the head on its stored "
        "features every epoch (same training, far less compute); refused with the reason logged otherwise",
    )


class ObservabilitySection(_Section):
    """Logs, in-process checks, the profiler."""

    log_interval: int = Field(50, ge=1)
    checks: bool = True
    profile: bool = False
    profile_start_step: int = Field(5, ge=0)
    profile_steps: int = Field(5, ge=1)


SECTIONS: tuple[type[_Section], ...] = (ModelSection, OptimisationSection, DataSection, SpeedSection, ObservabilitySection)


# the bases last-first: pydantic orders the fields from the last base, so they read as SECTIONS do
class Hyperparameters(ObservabilitySection, SpeedSection, DataSection, OptimisationSection, ModelSection):
    """What a training job can be told. Defaults are the ones a careful engineer would pick.

    The fields of ``defaults.RULE_FIELDS`` (epochs, learning rates, warm-up, label smoothing,
    augmentation) that a job does not give are chosen by the trainer from the data once it is indexed
    (``defaults.resolve``); their declared values here apply only where nothing is known of the data.

    The fields are declared in sections (``SECTIONS``, one class each) so that the ``train`` flags
    are grouped from the model itself, never from a second list of names.
    """

    @field_validator("freeze")
    @classmethod
    def _freeze_policy(cls, value: str) -> str:
        if not _FREEZE.match(value):
            raise ValueError("must be none, head or last:N")
        return value

    @property
    def trainable_stages(self) -> int | None:
        """None = everything trains; 0 = head only; N = the last N stages and the head."""
        if self.freeze == "none":
            return None
        if self.freeze == "head":
            return 0
        return int(self.freeze.split(":", 1)[1])

    @classmethod
    def from_strings(cls, raw: Mapping[str, str]) -> Hyperparameters:
        values: dict[str, str] = {}
        problems = []
        for key, value in raw.items():
            if key.startswith(SERVICE_PREFIX) or key in SERVICE_KEYS:
                continue
            if key.startswith("_"):
                problems.append(f"hyperparameter {key!r}: names starting with '_' are SageMaker's own (a typo for {key.lstrip('_')!r}?)")
                continue
            values[key.replace("-", "_")] = _unquote(value)
        try:
            hp = cls.model_validate(values)
        except ValidationError as exc:
            for err in exc.errors():
                name = ".".join(str(p) for p in err["loc"]) or "?"
                if err["type"] == "extra_forbidden":
                    problems.append(f"unknown hyperparameter {name!r}")
                else:
                    problems.append(f"hyperparameter {name}={values.get(name)!r}: {err['msg']}")
        if problems:
            raise UserError("; ".join(problems))
        return hp


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] == '"':
        try:
            decoded = json.loads(value)
        except ValueError:
            return value
        return str(decoded)
    return value
