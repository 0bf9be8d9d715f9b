"""What makes a model artifact servable, checked the same way by the front and by each worker.

The card must be valid, the weights must be safetensors (nothing pickled is ever read) and their
sha256 must match the card. The front checks at start-up (and before registering a model on a
multi-model endpoint), so a bad artifact fails fast with a reason; each worker checks again right
before it reads the weights, so a file swapped in between is still refused. No torch here: the
front process stays small.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import ValidationError

from image_classifier import params
from image_classifier.errors import UserError
from image_classifier.model_card import ModelCard, read_card
from image_classifier.modeling.weights_io import sha256_of


def load_card(model_dir: Path) -> ModelCard:
    path = model_dir / params.MODEL_CARD_FILE
    if not path.is_file():
        raise UserError(f"no model artifact: {path} is missing")
    try:
        return read_card(model_dir)
    except (ValueError, ValidationError) as exc:
        raise UserError(f"{path.name} is not a valid model card: {str(exc).splitlines()[0][:200]}") from None


def check_artifact(model_dir: Path) -> tuple[ModelCard, Path]:
    """The card and the path of weights that may be read; UserError with the reason otherwise."""
    card = load_card(model_dir)
    weights = model_dir / card.weights_file
    if weights.suffix != ".safetensors":
        raise UserError(f"refusing to load {weights.name}: only safetensors weights are served")
    if not weights.is_file():
        raise UserError(f"model artifact incomplete: {weights} is missing")
    digest = sha256_of(weights)
    if digest != card.weights_sha256:
        raise UserError(
            f"{weights.name} does not match the sha256 in {params.MODEL_CARD_FILE} "
            f"({digest[:12]}... vs {card.weights_sha256[:12]}...): corrupt or replaced artifact"
        )
    return card, weights
