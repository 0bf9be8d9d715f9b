"""The temperature: recovered when known, lowers held-out NLL, keeps every top-1; ECE and the bins."""

from __future__ import annotations

import pytest
import torch

from image_classifier.training.calibration import BOUNDS, calibrate, ece, fit_temperature, nll, reliability


def _draw(temperature: float, n: int, classes: int = 10, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits whose labels are drawn from softmax(logits / temperature): ``temperature`` is the true one."""
    generator = torch.Generator().manual_seed(seed)
    logits = 3 * torch.randn(n, classes, generator=generator)
    labels = torch.multinomial((logits / temperature).softmax(dim=1), 1, generator=generator).squeeze(1)
    return logits, labels


@pytest.mark.parametrize("true", [0.5, 1.0, 2.5])
def test_a_known_temperature_is_recovered(true):
    assert fit_temperature(*_draw(true, 20_000)) == pytest.approx(true, rel=0.08)


@pytest.mark.parametrize("true", [0.4, 3.0])
def test_on_held_out_data_nll_falls_and_no_top1_answer_changes(true):
    fitted = fit_temperature(*_draw(true, 5_000, seed=1))
    logits, labels = _draw(true, 5_000, seed=2)  # held out
    assert nll(logits, labels, fitted) < nll(logits, labels)
    assert torch.equal((logits / fitted).argmax(dim=1), logits.argmax(dim=1))


def test_ece_is_small_when_calibrated_and_large_when_overconfident():
    logits, labels = _draw(1.0, 20_000, seed=3)
    calibrated = ece(logits.softmax(dim=1), labels)
    overconfident = ece((logits * 4).softmax(dim=1), labels)
    assert calibrated < 0.02 < 0.1 < overconfident
    rows = reliability(logits.softmax(dim=1), labels)
    assert len(rows) == 15 and sum(r["count"] for r in rows) == 20_000
    assert all(r["low"] <= r["confidence"] <= r["high"] for r in rows if r["count"])


def test_the_temperature_stays_within_bounds():
    logits = torch.tensor([[10.0, -10.0], [10.0, -10.0]])
    assert fit_temperature(logits, torch.tensor([1, 1])) == BOUNDS[1]  # wrong and sure: no finite optimum
    assert BOUNDS[0] <= fit_temperature(logits, torch.tensor([0, 0])) <= 1.0  # right and sure: never softened


def test_calibrate_reports_every_split_before_and_after():
    result = calibrate(_draw(0.5, 3_000, seed=4), _draw(0.5, 3_000, seed=5))
    assert set(result.splits) == {"valid", "test"} and set(result.diagrams["test"]) == {"before", "after"}
    assert result.splits["test"]["ece_after"] < result.splits["test"]["ece_before"]
    assert result.metrics()["temperature"] == result.temperature and "test_nll_after" in result.metrics()


def test_logits_from_an_inference_mode_evaluation_can_be_calibrated():
    with torch.inference_mode():
        logits, labels = _draw(0.7, 2_000, seed=6)
        logits, labels = logits * 1, labels * 1  # inference tensors, as evaluate() returns them
    assert fit_temperature(logits, labels) == pytest.approx(0.7, rel=0.2)


def test_a_diverged_run_is_not_calibrated_and_huge_logits_stay_in_bounds(caplog):
    logits, labels = _draw(1.0, 200, seed=7)
    diverged = logits.clone()
    diverged[0, 0] = float("nan")
    assert calibrate((diverged, labels), (logits, labels)) is None
    assert "event=calibration_skipped reason=non_finite_validation_logits" in caplog.text
    exploded = logits * 1e18  # finite but as large as a learning rate of 50 makes them
    assert BOUNDS[0] <= fit_temperature(exploded, labels) <= BOUNDS[1]
