"""Honest probabilities: one temperature fitted on the validation set (Guo et al., 2017).

A fine-tuned classifier's softmax is rarely a confidence: label smoothing (on by default) makes it
too modest, long training too sure. Dividing every logit by one temperature ``T`` keeps every
top-1 answer and rescales the confidence; ``T`` minimises the negative log-likelihood of the
kept model on the validation split (``T < 1`` is allowed and is what label smoothing calls for).
NLL and expected calibration error (15 equal-width confidence bins) are reported before and
after, on validation (where ``T`` was fitted) and on test (held out), with a reliability diagram.
Serving divides the logits by the model card's ``temperature``; a card without one serves as before.
"""

from __future__ import annotations

import itertools
import logging
import math
from dataclasses import dataclass, field

import torch
from torch.nn import functional as F

from image_classifier.metrics import format_line

log = logging.getLogger(__name__)
BINS = 15
BOUNDS = (0.05, 20.0)  # a temperature outside these says something is wrong with the logits, not the scale


def nll(logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0) -> float:
    return float(F.cross_entropy(logits / temperature, labels))


def reliability(probabilities: torch.Tensor, labels: torch.Tensor, bins: int = BINS) -> list[dict[str, float]]:
    """Per confidence bin: mean confidence, accuracy, and how many predictions fell in it."""
    confidence, predicted = probabilities.max(dim=1)
    correct = (predicted == labels).float()
    edges = torch.linspace(0, 1, bins + 1)
    rows = []
    for low, high in itertools.pairwise(edges.tolist()):
        inside = (confidence > low) & (confidence <= high)
        count = int(inside.sum())
        rows.append(
            {
                "low": low,
                "high": high,
                "confidence": float(confidence[inside].mean()) if count else 0.0,
                "accuracy": float(correct[inside].mean()) if count else 0.0,
                "count": float(count),
            }
        )
    return rows


def ece(probabilities: torch.Tensor, labels: torch.Tensor, bins: int = BINS) -> float:
    """Expected calibration error: the count-weighted gap between confidence and accuracy per bin."""
    rows = reliability(probabilities, labels, bins)
    total = max(1.0, sum(r["count"] for r in rows))
    return sum(abs(r["accuracy"] - r["confidence"]) * r["count"] for r in rows) / total


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """The temperature of least NLL, by L-BFGS on log T (convex enough in practice), clamped to ``BOUNDS``."""
    log_t = torch.zeros(1, requires_grad=True)
    low, high = (math.log(bound) for bound in BOUNDS)
    optimizer = torch.optim.LBFGS([log_t], lr=0.1, max_iter=200, line_search_fn="strong_wolfe")
    logits, labels = logits.detach().float().clone(), labels.detach().clone()  # inference tensors cannot take part in autograd

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(logits / log_t.clamp(low, high).exp(), labels)  # flat outside: the search stays in range
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    return float(log_t.detach().exp().clamp(*BOUNDS))


@dataclass
class Calibration:
    temperature: float
    splits: dict[str, dict[str, float]] = field(default_factory=dict)  # split -> nll/ece before/after
    diagrams: dict[str, dict[str, list[dict[str, float]]]] = field(default_factory=dict)  # split -> before/after bins

    def measure(self, split: str, logits: torch.Tensor, labels: torch.Tensor) -> None:
        before, after = logits.softmax(dim=1), (logits / self.temperature).softmax(dim=1)
        self.splits[split] = {
            "nll_before": nll(logits, labels),
            "nll_after": nll(logits, labels, self.temperature),
            "ece_before": ece(before, labels),
            "ece_after": ece(after, labels),
        }
        self.diagrams[split] = {"before": reliability(before, labels), "after": reliability(after, labels)}
        log.info(format_line("calibration", split=split, temperature=self.temperature, **self.splits[split]))

    def metrics(self) -> dict[str, float]:
        """Flat, for metrics.json's ``final``, the model card and the tuning regexes' neighbours."""
        out = {"temperature": self.temperature}
        for split, values in self.splits.items():
            out |= {f"{split}_{key}": value for key, value in values.items()}
        return out


def calibrate(valid: tuple[torch.Tensor, torch.Tensor], test: tuple[torch.Tensor, torch.Tensor] | None) -> Calibration | None:
    """Fit on validation, report on validation and test; None (said in the log) when the logits are not finite.

    A diverged run (NaN or infinite logits) has no temperature worth fitting: its model card keeps
    none, and the diagnostics have already said why.
    """
    if not bool(torch.isfinite(valid[0]).all()):
        log.warning(format_line("calibration_skipped", reason="non_finite_validation_logits"))
        return None
    result = Calibration(fit_temperature(*valid))
    result.measure("valid", *valid)
    if test is not None:
        result.measure("test", *test)
    return result
