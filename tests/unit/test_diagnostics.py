import math

from image_classifier.training.diagnostics import TrainingChecks


def _rules(checks):
    return {f.rule for f in checks.findings}


def test_healthy_run_fires_nothing():
    checks = TrainingChecks()
    for step in range(60):
        checks.on_step(step // 20, 2.0 * math.exp(-step / 30), 1.5)
    checks.on_epoch(1, 1.0, 0.7, 1.0, 0.68)
    checks.on_epoch(2, 0.6, 0.8, 0.7, 0.76)
    assert checks.findings == []


def test_flat_loss_fires_loss_not_decreasing():
    checks = TrainingChecks()
    for step in range(40):
        checks.on_step(0, 2.3 + 0.01 * (step % 3), 1.0)
    checks.on_epoch(1, 2.3, 0.1, 2.3, 0.1)
    assert _rules(checks) == {"loss_not_decreasing"}


def test_exploding_and_vanishing_gradients():
    checks = TrainingChecks()
    checks.on_step(0, float("nan"), 1e9)
    assert "exploding_gradients" in _rules(checks)
    checks = TrainingChecks()
    for _ in range(20):
        checks.on_step(0, 1.0, 1e-9)
    assert "vanishing_gradients" in _rules(checks)


def test_overfitting_needs_a_persistent_gap():
    checks = TrainingChecks()
    checks.on_epoch(1, 0.1, 0.99, 2.0, 0.5)
    assert checks.findings == []
    checks.on_epoch(2, 0.05, 1.0, 2.2, 0.5)
    assert _rules(checks) == {"overfitting"}
    assert len(checks.findings) == 1  # each rule fires once
    checks.on_epoch(3, 0.05, 1.0, 2.2, 0.5)
    assert len(checks.findings) == 1
