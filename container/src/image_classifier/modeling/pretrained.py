"""Find a backbone's pretrained weights without touching the network.

Order: the ``pretrained`` channel, a file baked into the image at build time, then the local
caches that timm (Hugging Face hub) and torchvision (torch hub) fill. Asked for pretrained
weights and none found, the job fails: silently training from random init is the classic bug.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from image_classifier import params
from image_classifier.errors import UserError
from image_classifier.modeling.weights_io import WEIGHT_SUFFIXES, read_state_dict, safe_name, sha256_of


@dataclass(frozen=True)
class WeightSource:
    kind: str  # channel | baked | cache
    path: Path

    def load(self) -> dict[str, torch.Tensor]:
        return read_state_dict(self.path)

    def describe(self) -> str:
        return f"{self.kind}:{self.path}"

    def fingerprint(self) -> dict[str, str]:
        return {"source": self.kind, "file": self.path.name, "sha256": sha256_of(self.path)}


def _weight_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix in WEIGHT_SUFFIXES)


def _from_channel(model_name: str, channel: Path) -> Path | None:
    files = _weight_files(channel) if channel.is_dir() else []
    if not files:
        return None
    if len(files) == 1:
        return files[0]
    named = [p for p in files if p.stem == safe_name(model_name)] or [p for p in files if safe_name(model_name) in p.stem]
    if len(named) == 1:
        return named[0]
    raise UserError(
        f"channel '{params.PRETRAINED_CHANNEL}' holds several weight files {[p.name for p in files]}; "
        f"name the one for {model_name!r} '{safe_name(model_name)}.safetensors'"
    )


def _baked(model_name: str) -> Path | None:
    folder = Path(os.environ.get(params.BAKED_WEIGHTS_DIR_ENV, params.DEFAULT_BAKED_WEIGHTS_DIR))
    for suffix in WEIGHT_SUFFIXES:
        candidate = folder / f"{safe_name(model_name)}{suffix}"
        if candidate.is_file():
            return candidate
    return None


def _cached(model: nn.Module) -> Path | None:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    hub_id = cfg.get("hf_hub_id")
    if hub_id:
        try:
            from huggingface_hub import try_to_load_from_cache
        except ImportError:
            return None
        for filename in ("model.safetensors", "pytorch_model.bin"):
            found = try_to_load_from_cache(hub_id, filename)
            if isinstance(found, str):
                return Path(found)
    url = cfg.get("url")
    if url:
        candidate = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)
        if candidate.is_file():
            return candidate
    return None


def _torchvision_cached(model_name: str) -> Path | None:
    import torchvision

    try:
        weights = torchvision.models.get_model_weights(model_name.split("/", 1)[1]).DEFAULT
    except (ValueError, KeyError):
        return None
    candidate = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(weights.url)
    return candidate if candidate.is_file() else None


def find_pretrained(model_name: str, model: nn.Module, channel: Path | None) -> WeightSource:
    if channel is not None and (found := _from_channel(model_name, channel)):
        return WeightSource("channel", found)
    if found := _baked(model_name):
        return WeightSource("baked", found)
    cached = _torchvision_cached(model_name) if model_name.startswith("torchvision/") else _cached(model)
    if cached:
        return WeightSource("cache", cached)
    baked_dir = os.environ.get(params.BAKED_WEIGHTS_DIR_ENV, params.DEFAULT_BAKED_WEIGHTS_DIR)
    raise UserError(
        f"pretrained weights for {model_name!r} requested but none found: no file in the "
        f"'{params.PRETRAINED_CHANNEL}' channel, no {safe_name(model_name)}.safetensors in {baked_dir}, "
        f"nothing in the local timm/torch hub cache; add a '{params.PRETRAINED_CHANNEL}' channel or set pretrained=false"
    )
