"""Freeze policies: head only, the last N stages, or everything (parameter groups: training/optim.py)."""

from __future__ import annotations

from torch import nn

from image_classifier.modeling.factory import classifier_of


def stages(model: nn.Module) -> list[list[str]]:
    """Parameter names grouped from input to output, the head excluded.

    timm models describe their own stages (``group_matcher``); for others each top-level child
    that holds parameters is a stage.
    """
    head = {id(p) for p in classifier_of(model).parameters()}
    named = dict(model.named_parameters())
    if callable(matcher := getattr(model, "group_matcher", None)):
        from timm.models import group_parameters

        groups = [list(names) for names in group_parameters(model, matcher(coarse=True)).values()]
    else:
        groups = [[f"{child}.{n}" for n, _ in module.named_parameters()] for child, module in model.named_children()]
    out = [[n for n in g if id(named[n]) not in head] for g in groups]
    return [g for g in out if g]


def apply_freeze(model: nn.Module, trainable_stages: int | None) -> None:
    """``None``: train everything; ``0``: the head only; ``N``: the last N stages and the head."""
    for parameter in model.parameters():
        parameter.requires_grad_(trainable_stages is None)
    if trainable_stages is None:
        return
    for parameter in classifier_of(model).parameters():
        parameter.requires_grad_(True)
    named = dict(model.named_parameters())
    for group in stages(model)[len(stages(model)) - trainable_stages :] if trainable_stages else []:
        for name in group:
            named[name].requires_grad_(True)


def freeze_frozen_norms(model: nn.Module) -> None:
    """Put normalisation layers whose parameters are all frozen in eval mode after ``model.train()``.

    Otherwise a "frozen" backbone still drifts through its BatchNorm running statistics.
    """
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            params = list(module.parameters())
            if params and not any(p.requires_grad for p in params):
                module.eval()
