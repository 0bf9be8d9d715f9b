"""In-process training checks, the rules SageMaker Debugger would run, available everywhere.

Debugger is closed to new customers and has no framework profiling for PyTorch 2, so these run
inside the job on values the loop already has (loss, gradient norm, epoch metrics) and land in
the training report. Each rule fires once, with the evidence.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, field

log = logging.getLogger(__name__)

EXPLODING_NORM = 1e3
VANISHING_NORM = 1e-7
OVERFIT_GAP = 0.2
OVERFIT_EPOCHS = 2


@dataclass
class Finding:
    rule: str
    epoch: int
    message: str


@dataclass
class TrainingChecks:
    findings: list[Finding] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    _vanishing_steps: int = 0
    _steps: int = 0
    _overfit_streak: int = 0

    def _fire(self, rule: str, epoch: int, message: str) -> None:
        if any(f.rule == rule for f in self.findings):
            return
        self.findings.append(Finding(rule, epoch, message))
        log.warning("event=check_fired rule=%s epoch=%d message=%s", rule, epoch, message.replace(" ", "_"))

    def on_step(self, epoch: int, loss: float, grad_norm: float | None) -> None:
        self._steps += 1
        self.losses.append(loss)
        if not math.isfinite(loss) or (grad_norm is not None and (not math.isfinite(grad_norm) or grad_norm > EXPLODING_NORM)):
            self._fire("exploding_gradients", epoch, f"loss={loss:.4g} grad_norm={grad_norm if grad_norm is None else f'{grad_norm:.4g}'}")
        if grad_norm is not None and grad_norm < VANISHING_NORM:
            self._vanishing_steps += 1
            if self._steps >= 10 and self._vanishing_steps > self._steps / 2:
                self._fire(
                    "vanishing_gradients", epoch, f"gradient norm below {VANISHING_NORM} on {self._vanishing_steps} of {self._steps} steps"
                )

    def on_epoch(self, epoch: int, train_loss: float, train_acc: float, valid_loss: float, valid_acc: float) -> None:
        self._check_loss_trend(epoch)
        gap = train_acc - valid_acc
        self._overfit_streak = self._overfit_streak + 1 if gap > OVERFIT_GAP else 0
        if self._overfit_streak >= OVERFIT_EPOCHS:
            self._fire(
                "overfitting",
                epoch,
                f"train_acc={train_acc:.3f} exceeds valid_acc={valid_acc:.3f} by more than {OVERFIT_GAP} for {self._overfit_streak} epochs",
            )

    def _check_loss_trend(self, epoch: int) -> None:
        finite = [v for v in self.losses if math.isfinite(v)]
        window = max(3, len(finite) // 5)
        if len(finite) < 2 * window or len(finite) < 10:
            return
        first = sum(finite[:window]) / window
        last = sum(finite[-window:]) / window
        if last > first * 0.99:
            self._fire(
                "loss_not_decreasing",
                epoch,
                f"mean loss of the last {window} steps {last:.4g} is not below the first {window} steps {first:.4g}",
            )

    def as_dicts(self) -> list[dict]:
        return [asdict(f) for f in self.findings]
