"""How the worker's OpenMP threads wait (IMAGE_CLASSIFIER_OMP_SPIN): the setting's environment, and what is refused."""

from __future__ import annotations

import pytest

from image_classifier.errors import UserError
from image_classifier.serving.mms import DEFAULT_OMP_SPIN, openmp_wait


@pytest.mark.parametrize(
    ("setting", "expected"),
    [
        (DEFAULT_OMP_SPIN, {"GOMP_SPINCOUNT": "20000"}),  # the measured default: a short spin, then sleep
        ("passive", {"OMP_WAIT_POLICY": "PASSIVE"}),
        ("500", {"GOMP_SPINCOUNT": "500"}),
        ("default", {}),  # libgomp's own
    ],
)
def test_each_setting_gives_its_environment(setting, expected):
    assert openmp_wait(setting, {}) == expected


@pytest.mark.parametrize("given", [{"OMP_WAIT_POLICY": "ACTIVE"}, {"GOMP_SPINCOUNT": "0"}])
def test_a_wait_policy_the_user_set_is_left_alone(given):
    assert openmp_wait("passive", given) == {} and openmp_wait(DEFAULT_OMP_SPIN, given) == {}


@pytest.mark.parametrize("bad", ["fast", "-1", "2e4", ""])
def test_anything_else_is_refused_with_the_choices(bad):
    with pytest.raises(UserError, match="use passive, default or a spin count"):
        openmp_wait(bad, {})
