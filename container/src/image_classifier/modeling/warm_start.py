"""Start from a previous model artifact of this tool (the ``model`` channel) instead of ImageNet weights.

The artifact may be the folder or SageMaker's ``model.tar.gz``. Its card must name the same
architecture and its weights must match the card's sha256. Same classes: every weight loads,
head included; other classes: the backbone loads and the new head starts fresh.
"""

from __future__ import annotations

import logging
import tarfile
from pathlib import Path

from torch import nn

from image_classifier import params
from image_classifier.errors import UserError
from image_classifier.model_card import read_card
from image_classifier.modeling.factory import load_backbone_weights
from image_classifier.modeling.weights_io import read_state_dict, sha256_of

log = logging.getLogger(__name__)


def warm_start(channel: Path, model: nn.Module, model_name: str, classes: list[str], workdir: Path) -> str:
    """Load the artifact in ``channel`` into ``model``; return its weights' sha256."""
    tarballs = sorted(channel.glob("*.tar.gz"))
    folder = channel
    if tarballs:
        folder = workdir / "warm_start"
        with tarfile.open(tarballs[0]) as archive:
            archive.extractall(folder, filter="data")
    if not (folder / params.MODEL_CARD_FILE).exists():
        raise UserError(f"channel '{params.MODEL_CHANNEL}' holds no {params.MODEL_CARD_FILE} (a model artifact of this tool)")
    card = read_card(folder)
    if card.architecture != model_name:
        raise UserError(f"warm-start artifact is a {card.architecture}, the job trains {model_name}")
    weights = folder / card.weights_file
    if sha256_of(weights) != card.weights_sha256:
        raise UserError(f"warm-start weights {weights.name} do not match the sha256 in their model card")
    state = read_state_dict(weights)
    if card.classes == classes:
        model.load_state_dict(state)
    else:
        load_backbone_weights(model, state, f"{params.MODEL_CHANNEL} channel")
    log.info("event=warm_start classes_match=%s", card.classes == classes)
    return card.weights_sha256
