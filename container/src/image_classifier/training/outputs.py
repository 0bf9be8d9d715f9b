"""Everything a finished job leaves behind: the model artifact, metrics, plots and the report.

``/opt/ml/model`` gets the weights of the kept (best) epoch and the model card; ``/opt/ml/output/data``
the metrics JSON, the per-class table, the confusion matrix, the learning curves and the training
report; the TensorBoard run gets the final scalars. Only the main process writes.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
from torch import nn

from image_classifier import params
from image_classifier.data.presets import DataConfig
from image_classifier.environment import TrainingEnvironment
from image_classifier.hyperparameters import Hyperparameters
from image_classifier.metrics import format_line
from image_classifier.model_card import write_artifact
from image_classifier.training import reports
from image_classifier.training.calibration import Calibration
from image_classifier.training.diagnostics import TrainingChecks
from image_classifier.training.engine import EvalResult
from image_classifier.training.progress import Progress

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FinalEvaluation:
    """The kept model on the test split (or on validation when there is none)."""

    metrics: dict[str, float]  # what the ``final`` line prints and the model card keeps
    result: EvalResult  # with every prediction, for the confusion matrix
    split: str  # test | validation


@dataclass(frozen=True)
class JobSummary:
    """What the report says about the run besides its metrics."""

    checks: TrainingChecks | None
    system: dict[str, float]  # CPU/GPU/memory use sampled during the epochs
    pretrained: dict[str, str] | None  # where the starting weights came from, and their sha256
    calibration: Calibration | None = None  # the temperature and its effect, if fitted


def write_outputs(
    env: TrainingEnvironment,
    hp: Hyperparameters,
    *,
    model: nn.Module,
    classes: list[str],
    data_config: DataConfig,
    progress: Progress,
    final: FinalEvaluation,
    summary: JobSummary,
    tensorboard: Any,
) -> None:
    output_dir = env.output_data_dir
    history = progress.history
    labels = np.asarray(final.result.labels, dtype=np.int64)
    preds = np.asarray(final.result.preds, dtype=np.int64)
    matrix = reports.confusion_matrix(labels, preds, len(classes))
    reports.write_per_class(reports.per_class_rows(matrix, classes), output_dir / params.PER_CLASS_FILE)
    reports.plot_confusion(matrix, classes, output_dir / params.CONFUSION_MATRIX_FILE, f"{final.split} confusion matrix")
    if history:
        reports.plot_learning_curves(history, output_dir / params.LEARNING_CURVES_FILE)
    calibration = summary.calibration
    metrics: dict[str, Any] = {"final": final.metrics, "history": history, "eval_split": final.split, "classes": classes}
    if calibration is not None:
        metrics["calibration"] = {"temperature": calibration.temperature, "splits": calibration.splits, "diagrams": calibration.diagrams}
        reports.plot_reliability(calibration.diagrams, calibration.temperature, output_dir / params.RELIABILITY_FILE)
    (output_dir / params.METRICS_FILE).write_text(json.dumps(metrics, indent=2) + "\n")
    for key in ("test_acc", "test_loss", "best_valid_acc"):
        if key in final.metrics:
            tensorboard.add_scalar(f"final/{key}", final.metrics[key], len(history))
    tensorboard.close()
    card = write_artifact(
        env.model_dir,
        model.state_dict(),
        architecture=hp.model,
        num_classes=len(classes),
        classes=classes,
        preprocessing=data_config.as_dict(),
        metrics={k: float(v) for k, v in final.metrics.items()},
        hyperparameters=hp.model_dump(),
        pretrained=summary.pretrained,
        job_name=env.job_name,
        temperature=calibration.temperature if calibration else None,
        calibration=calibration.splits if calibration else None,
    )
    report = {
        "job_name": env.job_name,
        "status": "early_stopped" if progress.early_stopped else "completed",
        "model": hp.model,
        "num_classes": len(classes),
        "hyperparameters": hp.model_dump(),
        "final_metrics": final.metrics,
        "history": history,
        "findings": summary.checks.as_dicts() if summary.checks else [],
        "checks_enabled": summary.checks is not None,
        "system": summary.system,
        "weights_sha256": card.weights_sha256,
        "profiler_trace": str(env.tensorboard_dir / params.PROFILER_DIR) if hp.profile else None,
        "calibration": {"temperature": calibration.temperature, "splits": calibration.splits} if calibration else None,
    }
    reports.write_report(report, output_dir)
    log.info(format_line("artifact", model_dir=str(env.model_dir), weights_sha256=card.weights_sha256[:12]))
