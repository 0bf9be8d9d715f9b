"""The optimizer, its parameter groups and the learning-rate schedule: the whole ``lr`` story.

``lr`` goes from the hyperparameters to ``create_optimizer`` (head at ``lr``, backbone at
``lr * backbone_lr_mult``, no weight decay on biases and norms) and is then scaled every step by
``lr_factor``: a linear warm-up over ``warmup_epochs``, then ``cosine`` to zero, ``step`` decay
by ``gamma`` every ``step_size`` epochs, or ``constant``. As in timm, the factory owns the
parameter groups; as in nanoGPT, the schedule is one pure function.
"""

from __future__ import annotations

import logging
import math

import torch
from torch import nn

from image_classifier.errors import UserError
from image_classifier.hyperparameters import Hyperparameters
from image_classifier.metrics import format_line
from image_classifier.modeling.factory import classifier_of

log = logging.getLogger(__name__)


def parameter_groups(model: nn.Module, lr: float, backbone_lr_mult: float, weight_decay: float) -> list[dict]:
    """Head at ``lr``, backbone at ``lr * backbone_lr_mult``; no weight decay on biases and norms."""
    head = {id(p) for p in classifier_of(model).parameters()}
    buckets: dict[tuple[str, bool], list] = {}
    for parameter in model.parameters():
        if not parameter.requires_grad:
            continue
        part = "head" if id(parameter) in head else "backbone"
        buckets.setdefault((part, parameter.ndim > 1), []).append(parameter)
    groups = []
    for (part, decay), tensors in sorted(buckets.items(), key=lambda kv: (kv[0][0] != "head", not kv[0][1])):
        groups.append(
            {
                "name": f"{part}{'' if decay else '_no_decay'}",
                "params": tensors,
                "lr": lr if part == "head" else lr * backbone_lr_mult,
                "weight_decay": weight_decay if decay else 0.0,
            }
        )
    return groups


def create_optimizer(model: nn.Module, hp: Hyperparameters, device: torch.device) -> torch.optim.Optimizer:
    """SGD (Nesterov when there is momentum) or AdamW, fused into one kernel per step on CUDA."""
    groups = parameter_groups(model, hp.lr, hp.backbone_lr_mult, hp.weight_decay)
    if not groups:
        raise UserError("no trainable parameters: check the freeze hyperparameter")
    for group in groups:
        log.info(
            format_line("param_group", name=group["name"], lr=group["lr"], weight_decay=group["weight_decay"], tensors=len(group["params"]))
        )
    if hp.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=hp.lr, momentum=hp.momentum, nesterov=hp.momentum > 0)
    return torch.optim.AdamW(groups, lr=hp.lr, fused=True if device.type == "cuda" else None)


def lr_factor(step: int, *, steps_per_epoch: int, epochs: int, warmup_epochs: float, scheduler: str, step_size: int, gamma: float) -> float:
    """The multiplier of every group's ``lr`` after ``step`` optimizer steps (step 0 is the first)."""
    total = max(1, epochs * steps_per_epoch)
    warmup = int(warmup_epochs * steps_per_epoch)
    if step < warmup:
        return (step + 1) / warmup
    if scheduler == "cosine":
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    if scheduler == "step":
        return gamma ** ((step // steps_per_epoch) // step_size)
    return 1.0


def create_scheduler(optimizer: torch.optim.Optimizer, hp: Hyperparameters, steps_per_epoch: int) -> torch.optim.lr_scheduler.LambdaLR:
    """``lr_factor`` stepped once per optimizer step (a resumed job restores its position)."""
    # a plain function, not a callable object: LambdaLR then keeps nothing of it in its state_dict
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: lr_factor(
            step,
            steps_per_epoch=steps_per_epoch,
            epochs=hp.epochs,
            warmup_epochs=hp.warmup_epochs,
            scheduler=hp.scheduler,
            step_size=hp.step_size,
            gamma=hp.gamma,
        ),
    )
