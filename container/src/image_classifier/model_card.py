"""The model artifact: safetensors weights plus a JSON model card that drives serving.

The card records everything needed to rebuild and preprocess exactly as training did
(architecture, classes in index order, input size, normalisation), what produced it (library
versions, hyperparameters, pretrained weights) and the sha256 of the weights, which the server
verifies before it loads anything.
"""

from __future__ import annotations

import json
import platform
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict

from image_classifier import __version__, params
from image_classifier.atomic import atomic_target
from image_classifier.modeling.weights_io import sha256_of

if TYPE_CHECKING:
    import torch


class Normalisation(BaseModel):
    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str
    crop_pct: float


class ModelCard(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    schema_version: int = params.MODEL_CARD_SCHEMA_VERSION
    architecture: str
    num_classes: int
    classes: list[str]
    preprocessing: Normalisation
    weights_file: str = params.WEIGHTS_FILE
    weights_sha256: str
    versions: dict[str, str]
    metrics: dict[str, float]
    hyperparameters: dict[str, object]
    pretrained: dict[str, str] | None
    job_name: str
    created_at: str
    # divide the logits by this before the softmax (fitted on validation); absent in older cards: 1
    temperature: float | None = None
    calibration: dict[str, dict[str, float]] | None = None  # split -> NLL and ECE before/after


def library_versions() -> dict[str, str]:
    import timm
    import torch
    import torchvision

    return {
        "image_classifier": __version__,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "timm": timm.__version__,
        "python": platform.python_version(),
    }


def atomic_write_bytes(path: Path, data: bytes) -> None:
    with atomic_target(path) as tmp:
        tmp.write_bytes(data)


def save_weights(state: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> str:
    """Write ``state`` as safetensors atomically; return its sha256."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}
    with atomic_target(path) as tmp:
        save_file(tensors, str(tmp), metadata={"format": "pt", **(metadata or {})})
    return sha256_of(path)


def write_artifact(model_dir: Path, state: dict[str, torch.Tensor], **card_fields) -> ModelCard:
    digest = save_weights(state, model_dir / params.WEIGHTS_FILE)
    card = ModelCard(
        weights_sha256=digest,
        versions=library_versions(),
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        **card_fields,
    )
    atomic_write_bytes(model_dir / params.MODEL_CARD_FILE, (card.model_dump_json(indent=2) + "\n").encode())
    return card


def read_card(model_dir: Path) -> ModelCard:
    return ModelCard.model_validate(json.loads((model_dir / params.MODEL_CARD_FILE).read_text()))
