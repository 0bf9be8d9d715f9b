"""The defaults rule: what the trainer chooses from the data for what the user did not give."""

from __future__ import annotations

import subprocess
import sys

import pytest

from image_classifier import defaults
from image_classifier.defaults import Facts, recommend, resolve
from image_classifier.hyperparameters import Hyperparameters


def _facts(**changes) -> Facts:
    base = {"train_images": 500, "classes": 10, "model": "tf_efficientnet_lite0", "global_batch": 32, "frozen": False}
    return Facts(**{**base, **changes})


def test_given_values_win_and_every_other_rule_field_is_chosen():
    hp = Hyperparameters.from_strings({"lr": "0.01", "epochs": "4"})
    resolved, chosen = resolve(hp, _facts())
    assert (resolved.lr, resolved.epochs) == (0.01, 4)
    assert set(chosen) == set(defaults.RULE_FIELDS) - {"lr", "epochs"}
    assert resolved.backbone_lr_mult == chosen["backbone_lr_mult"] == defaults.BACKBONE_LR_MULT
    assert Hyperparameters.model_validate(resolved.model_dump()) == resolved  # every chosen value is a valid one


@pytest.mark.parametrize(("images", "epochs"), [(50, 30), (320, 16), (500, 10), (1197, 5), (2500, 3), (1_000_000, 3)])
def test_small_sets_get_enough_steps_and_large_ones_are_not_over_trained(images, epochs):
    assert recommend(_facts(train_images=images))["epochs"] == epochs


def test_the_learning_rate_follows_the_global_batch_the_optimizer_and_the_family():
    base = recommend(_facts())["lr"]
    assert base == defaults.BASE_LR["adamw"]
    assert recommend(_facts(global_batch=128))["lr"] == pytest.approx(2 * base)  # sqrt(128 / 32)
    assert recommend(_facts(optimizer="sgd"))["lr"] == pytest.approx(10 * base)
    assert recommend(_facts(model="vit_base_patch16_224"))["lr"] < base
    assert recommend(_facts(model="resnet50"))["lr"] == base == recommend(_facts(model="torchvision/resnet18"))["lr"]


def test_a_frozen_backbone_trains_its_head_faster_on_unaugmented_images():
    frozen = recommend(_facts(frozen=True))
    assert frozen["augment"] == "none"  # so the feature cache can compute the backbone's features once
    assert frozen["lr"] == pytest.approx(defaults.FROZEN_LR_FACTOR * defaults.BASE_LR["adamw"])


def test_the_backbone_trains_at_the_heads_rate_after_the_warm_up():
    assert recommend(_facts())["backbone_lr_mult"] == recommend(_facts(train_images=100_000))["backbone_lr_mult"] == 1.0


@pytest.mark.parametrize(
    ("given", "frozen", "expected"),
    [({}, False, 3e-3 * 0.5), ({}, True, 9e-3 * 0.5), ({"lr": "0.02"}, False, 0.01)],
)
def test_lr_scale_multiplies_the_rate_whichever_way_it_was_set_and_is_spent_once(given, frozen, expected):
    """The tuning job searches lr_scale, so every trial is centred on the rule's rate for its batch and freeze."""
    hp = Hyperparameters.from_strings({**given, "lr_scale": "0.5", **({"freeze": "head"} if frozen else {})})
    resolved, chosen = resolve(hp, _facts(frozen=frozen))
    assert resolved.lr == pytest.approx(expected) and chosen["lr"] == pytest.approx(expected)
    assert resolved.lr_scale == 1.0
    again, _ = resolve(resolved, _facts(frozen=frozen))
    assert again.lr == pytest.approx(expected)


def test_warm_up_is_a_short_share_of_training():
    assert recommend(_facts(train_images=500))["warmup_epochs"] == 0.5
    assert recommend(_facts(train_images=50))["warmup_epochs"] == 1.0
    assert recommend(_facts(train_images=1_000_000))["warmup_epochs"] == 0.15


def test_the_rule_imports_no_torch():
    """deploy/ uses it and must stay torch-free."""
    code = "import sys, image_classifier.defaults; sys.exit(1 if 'torch' in sys.modules else 0)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_train_help_shows_the_rule_not_a_constant():
    from image_classifier.training.launcher import get_args_parser

    text = " ".join(get_args_parser().format_help().split())  # argparse wraps lines
    assert "ceil(5000 / training images)" in text and "sqrt(global batch / 32)" in text and "(default: 0.001)" not in text
