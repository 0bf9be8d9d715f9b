"""The defaults a user who tunes nothing gets: a rule of what the trainer knows at start, not constants.

Constants tuned on one data set fail on the next: the right fine-tuning learning rate and amount of
training depend on the data's size and on how far it is from the pretraining data (the transfer
literature; timm's and JumpStart's per-model recipes). ``recommend`` turns what the trainer knows
once the channels are indexed (training images, classes, model family, global batch, frozen or not,
optimizer) into the values of every hyperparameter in ``RULE_FIELDS`` that the user
did not give; ``resolve`` applies them (given values always win) and says which it chose.

The numbers come from ``local/bench/quality_bench.py``: a grid of learning rate x backbone multiplier
on five data sets and three EfficientNet-Lite models, three seeds each (docs/training.md#defaults has
the table and the command). ResNet, ConvNeXt and the transformer families follow the rule by family
and were not measured here (their ImageNet weights cannot be fetched offline).

Torch-free: ``deploy/`` centres the tuning search space on the same rule.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from image_classifier.hyperparameters import Hyperparameters

RULE_FIELDS = ("epochs", "lr", "backbone_lr_mult", "warmup_epochs", "label_smoothing", "augment")

REFERENCE_BATCH = 32  # the batch the base rates were measured at; other global batches scale them by sqrt(batch / 32)
BASE_LR = {"adamw": 3e-3, "sgd": 3e-2}  # the head's rate (the best grid rate with AdamW on every measured set; sgd: not measured)
FROZEN_LR_FACTOR = 3.0  # a head alone on fixed features: 9e-3 best or within 2.3 points of it on three sets
FAMILY_LR_FACTOR = {"convnet": 1.0, "transformer": 1 / 3}  # transformers fine-tune at lower rates (timm's and DeiT's recipes)
# the backbone at the head's rate: the best grid point on 6 of 7 measured pairs, and within a point of the best
# (0.5) on photos at 128 px; 0.3 lost 2-7 points, and lr=0.01 at 1.0 diverged (so the rate is not raised further)
BACKBONE_LR_MULT = 1.0
IMAGES_SEEN = 5000  # images a small set is trained on in all (epochs x training images), at least ...
MIN_EPOCHS, MAX_EPOCHS = 3, 30  # ... in 3 to 30 epochs: a large set is not over-trained, a tiny one not for hours
WARMUP_SHARE, MAX_WARMUP_EPOCHS = 0.05, 1.0  # linear warm-up over 5 % of the training, at most one epoch
LABEL_SMOOTHING = 0.1
TRANSFORMERS = re.compile(
    r"(^|/)(vit|deit|beit|swin|eva|cait|xcit|pvt|twins|mvit|levit|tnt|crossvit|coat|convit|maxvit|efficientformer|fastvit)"
)

# what `train --help` and the hyperparameter reference show for each field
HELP = {
    "epochs": f"default: ceil({IMAGES_SEEN} / training images), within [{MIN_EPOCHS}, {MAX_EPOCHS}]",
    "lr": f"default: {BASE_LR['adamw']:g} (adamw) or {BASE_LR['sgd']:g} (sgd) x sqrt(global batch / {REFERENCE_BATCH}); "
    f"x{FROZEN_LR_FACTOR:g} with freeze=head; x{FAMILY_LR_FACTOR['transformer']:.2g} for transformers",
    "backbone_lr_mult": f"default: {BACKBONE_LR_MULT:g} (the backbone at the head's rate, after the warm-up)",
    "warmup_epochs": f"default: {WARMUP_SHARE:.0%} of the epochs, at most {MAX_WARMUP_EPOCHS:g}",
    "label_smoothing": f"default: {LABEL_SMOOTHING:g}",
    "augment": "default: standard; none with freeze=head (so that the backbone's features are computed once)",
}


@dataclass(frozen=True)
class Facts:
    """What the trainer knows once the channels are indexed."""

    train_images: int
    classes: int
    model: str
    global_batch: int
    frozen: bool  # freeze=head: the backbone does not train
    optimizer: str = "adamw"

    @classmethod
    def of(cls, hp: Hyperparameters, train_images: int, classes: int, world_size: int = 1) -> Facts:
        return cls(
            train_images=train_images,
            classes=classes,
            model=hp.model,
            global_batch=hp.batch_size * world_size,
            frozen=hp.freeze == "head",
            optimizer=hp.optimizer,
        )


def family(model: str) -> str:
    return "transformer" if TRANSFORMERS.search(model.lower()) else "convnet"


def recommend(facts: Facts) -> dict[str, Any]:
    """The rule's value of every field of ``RULE_FIELDS`` for these facts."""
    epochs = min(MAX_EPOCHS, max(MIN_EPOCHS, math.ceil(IMAGES_SEEN / max(1, facts.train_images))))
    lr = BASE_LR[facts.optimizer] * FAMILY_LR_FACTOR[family(facts.model)] * math.sqrt(facts.global_batch / REFERENCE_BATCH)
    if facts.frozen:
        lr *= FROZEN_LR_FACTOR
    return {
        "epochs": epochs,
        "lr": float(f"{lr:.3g}"),
        "backbone_lr_mult": BACKBONE_LR_MULT,
        "warmup_epochs": round(min(MAX_WARMUP_EPOCHS, WARMUP_SHARE * epochs), 2),
        "label_smoothing": LABEL_SMOOTHING,
        "augment": "none" if facts.frozen else "standard",
    }


def resolve(hp: Hyperparameters, facts: Facts) -> tuple[Hyperparameters, dict[str, Any]]:
    """``hp`` with every rule field the user did not give set by the rule; and those fields' values.

    ``lr_scale`` then multiplies the learning rate, given or chosen, and is spent (1.0 in the result, so
    resolving twice changes nothing): a tuning job searches the scale, which centres every trial on the
    rate the rule gives for that trial's batch size and freeze.
    """
    chosen = {k: v for k, v in recommend(facts).items() if k not in hp.model_fields_set}
    if hp.lr_scale != 1.0:
        chosen["lr"] = float(f"{chosen.get('lr', hp.lr) * hp.lr_scale:.4g}")
    return hp.model_copy(update={**chosen, "lr_scale": 1.0}), chosen
