"""Reading weight files without pickle: safetensors, or ``torch.load(weights_only=True)``."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING

from image_classifier.errors import UserError

if TYPE_CHECKING:
    import torch

WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")


def safe_name(model_name: str) -> str:
    """The file stem a model's weights go by (``torchvision/resnet50`` -> ``torchvision_resnet50``)."""
    return model_name.replace("/", "_")


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Load a plain state dict; arbitrary pickled objects are refused by ``weights_only``."""
    import torch
    from safetensors.torch import load_file

    state: object
    try:
        if path.suffix == ".safetensors":
            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise UserError(f"cannot load weights file {path.name}: {type(exc).__name__}: {str(exc)[:200]}") from exc
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"weights file {path.name} does not hold a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in state.items()}
