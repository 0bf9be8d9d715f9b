"""The ``name=value`` log lines the trainer prints and the regexes that read them back.

SageMaker hyperparameter tuning and the training-job console extract metrics with these
regexes (``metric_definitions``). They live next to the code that prints the lines and are
tested against a real training log, so they can never silently stop matching.

The tuning objective is ``best_valid_acc``, the best validation accuracy so far, printed on every
epoch line and again on the final one: SageMaker ranks a trial by the last value it read, and the
job keeps its best epoch, not its last, so the objective is the accuracy of the model kept.
"""

from __future__ import annotations

import math
import re

NUMBER = r"([-+]?(?:[0-9]*\.)?[0-9]+(?:[eE][-+]?[0-9]+)?|nan|inf)"

# metric name -> what it means; the names are the keys printed on the log lines
EPOCH_METRICS = {
    "train_loss": "mean training loss over the epoch",
    "train_acc": "training top-1 accuracy over the epoch (augmented inputs)",
    "valid_loss": "validation loss",
    "valid_acc": "validation top-1 accuracy of this epoch",
    "best_valid_acc": "best validation accuracy so far: the epoch kept (the tuning objective)",
    "lr": "learning rate of the head at the end of the epoch",
    "images_per_sec": "training throughput over the epoch, all ranks",
}
FINAL_METRICS = {
    "test_loss": "test loss of the model kept",
    "test_acc": "test top-1 accuracy of the model kept",
    "test_top5_acc": "test top-5 accuracy of the model kept",
    "bad_images": "unreadable images skipped",
}
OBJECTIVE_METRIC = "best_valid_acc"


def metric_regex(name: str) -> str:
    """``\\b`` keeps ``valid_acc`` from matching inside ``best_valid_acc`` (``_`` is a word character).

    Only constructs every regex engine has (no look-behind), since SageMaker evaluates them.
    """
    return rf"\b{re.escape(name)}={NUMBER}"


def metric_definitions() -> list[dict[str, str]]:
    """The list the SageMaker SDK's ``metric_definitions=`` and tuning jobs take."""
    return [{"Name": name, "Regex": metric_regex(name)} for name in {**EPOCH_METRICS, **FINAL_METRICS}]


def format_value(value: float | int) -> str:
    if isinstance(value, int):
        return str(value)
    if math.isnan(value) or math.isinf(value):
        return "nan" if math.isnan(value) else "inf"
    return f"{value:.6g}"


def format_line(event: str, **values: float | int | str) -> str:
    """One event, one line: ``event=epoch epoch=3 train_loss=0.41 ...``."""
    parts = [f"event={event}"]
    for key, value in values.items():
        parts.append(f"{key}={value if isinstance(value, str) else format_value(value)}")
    return " ".join(parts)


def parse_line(line: str) -> dict[str, float]:
    """Read every known metric on a line with the same regexes SageMaker uses."""
    out = {}
    for definition in metric_definitions():
        match = re.search(definition["Regex"], line)
        if match:
            out[definition["Name"]] = float(match.group(1))
    return out
