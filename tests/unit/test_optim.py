"""The optimizer factory's parameter groups and the learning-rate schedule, as pure functions."""

import itertools
import math

import pytest
import timm
import torch

from image_classifier.hyperparameters import Hyperparameters
from image_classifier.modeling.freezing import apply_freeze
from image_classifier.training.optim import create_optimizer, create_scheduler, lr_factor, parameter_groups

EPOCH = 10  # steps per epoch in the schedule tests


@pytest.fixture(scope="module")
def resnet():
    return timm.create_model("resnet18", num_classes=4)


def _factors(steps: int, **settings) -> list[float]:
    defaults = {"steps_per_epoch": EPOCH, "epochs": 5, "warmup_epochs": 0.0, "scheduler": "constant", "step_size": 2, "gamma": 0.5}
    return [lr_factor(step, **{**defaults, **settings}) for step in range(steps)]


def test_parameter_groups_carry_the_stated_learning_rates(resnet):
    apply_freeze(resnet, None)
    groups = {g["name"]: g for g in parameter_groups(resnet, lr=0.01, backbone_lr_mult=0.1, weight_decay=0.05)}
    assert set(groups) == {"head", "head_no_decay", "backbone", "backbone_no_decay"}
    assert groups["head"]["lr"] == 0.01 and groups["backbone"]["lr"] == pytest.approx(0.001)
    assert groups["backbone_no_decay"]["weight_decay"] == 0.0 and groups["backbone"]["weight_decay"] == 0.05
    assert sum(len(g["params"]) for g in groups.values()) == len(list(resnet.parameters()))
    apply_freeze(resnet, 0)
    assert {g["name"] for g in parameter_groups(resnet, 0.01, 0.1, 0.05)} == {"head", "head_no_decay"}


def test_warmup_rises_linearly_to_the_full_rate():
    factors = _factors(25, warmup_epochs=2.0)
    assert factors[:20] == pytest.approx([(s + 1) / 20 for s in range(20)])
    assert factors[19] == 1.0 and factors[20:] == [1.0] * 5


def test_cosine_falls_from_one_to_zero_after_warmup():
    factors = _factors(50, scheduler="cosine", warmup_epochs=1.0)
    assert factors[10] == 1.0  # the first step after warm-up
    assert factors[30] == pytest.approx(0.5)  # halfway through the 40 cosine steps
    assert factors[49] == pytest.approx(0.5 * (1 + math.cos(math.pi * 39 / 40)))
    assert all(a >= b for a, b in itertools.pairwise(factors[10:]))
    assert _factors(60, scheduler="cosine")[55] == 0.0  # past the last epoch it stays at zero


def test_step_decays_by_gamma_every_step_size_epochs():
    factors = _factors(50, scheduler="step")
    assert set(factors[:20]) == {1.0} and set(factors[20:40]) == {0.5} and set(factors[40:]) == {0.25}


def test_constant_stays_at_one():
    assert set(_factors(50)) == {1.0}


def test_scheduler_applies_the_factor_to_every_group_and_resumes(resnet):
    apply_freeze(resnet, None)
    hp = Hyperparameters(lr=0.1, backbone_lr_mult=0.1, scheduler="step", step_size=1, gamma=0.5, epochs=3)
    optimizer = create_optimizer(resnet, hp, torch.device("cpu"))
    scheduler = create_scheduler(optimizer, hp, steps_per_epoch=2)
    for _ in range(2):
        optimizer.step()
        scheduler.step()
    lrs = {g["name"]: g["lr"] for g in optimizer.param_groups}
    assert lrs["head"] == pytest.approx(0.05) and lrs["backbone"] == pytest.approx(0.005)
    restored = create_scheduler(create_optimizer(resnet, hp, torch.device("cpu")), hp, steps_per_epoch=2)
    restored.load_state_dict(scheduler.state_dict())
    assert restored.last_epoch == 2 and restored.get_last_lr() == scheduler.get_last_lr()
    assert scheduler.state_dict()["lr_lambdas"] == [None] * len(optimizer.param_groups)  # nothing of the function pickled


def test_no_trainable_parameter_is_refused(resnet):
    from image_classifier.errors import UserError

    for parameter in resnet.parameters():
        parameter.requires_grad_(False)
    with pytest.raises(UserError, match="no trainable parameters"):
        create_optimizer(resnet, Hyperparameters(), torch.device("cpu"))
    apply_freeze(resnet, None)


def test_adamw_stays_unfused_on_cpu(resnet):
    apply_freeze(resnet, None)
    optimizer = create_optimizer(resnet, Hyperparameters(), torch.device("cpu"))
    assert isinstance(optimizer, torch.optim.AdamW) and not optimizer.defaults["fused"]
