"""Read a finished tuning job: every trial as a row, and the best job's hyperparameters and model."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import ClientError

from image_classifier.metrics import OBJECTIVE_METRIC

log = logging.getLogger(__name__)

# set by the SDK or SageMaker, not by the user: never copied into the final job
_SERVICE_KEYS = ("sagemaker_", "_tuning_objective_metric")


def user_hyperparameters(hyperparameters: dict[str, str]) -> dict[str, str]:
    return {k: v.strip('"') for k, v in hyperparameters.items() if not k.startswith(_SERVICE_KEYS)}


@dataclass(frozen=True)
class BestJob:
    name: str
    hyperparameters: dict[str, str]
    model_data: str
    objective: float | None


def best_job(sm: Any, tuning_job: str) -> BestJob:
    described = sm.describe_hyper_parameter_tuning_job(HyperParameterTuningJobName=tuning_job)
    status = described["HyperParameterTuningJobStatus"]
    best = described.get("BestTrainingJob")
    if not best:
        raise RuntimeError(f"tuning job {tuning_job} ({status}) has no best training job yet")
    job = sm.describe_training_job(TrainingJobName=best["TrainingJobName"])
    objective = best.get("FinalHyperParameterTuningJobObjectiveMetric", {}).get("Value")
    return BestJob(
        name=best["TrainingJobName"],
        hyperparameters=user_hyperparameters(job.get("HyperParameters", {})),
        model_data=job["ModelArtifacts"]["S3ModelArtifacts"],
        objective=objective,
    )


def _row(summary: dict[str, Any]) -> dict[str, Any]:
    metric = summary.get("FinalHyperParameterTuningJobObjectiveMetric") or {}
    return {
        "job": summary["TrainingJobName"],
        "status": summary.get("TrainingJobStatus"),
        OBJECTIVE_METRIC: metric.get("Value"),
        **user_hyperparameters(summary.get("TunedHyperParameters", {})),
    }


def trials(sm: Any, tuning_job: str) -> list[dict[str, Any]]:
    """All trials, best first.

    Uses ListTrainingJobsForHyperParameterTuningJob. Where the endpoint does not implement it
    (the local AWS emulator answers 500), falls back to the training jobs whose names start with
    the tuning job's name (SageMaker names trials ``<tuning-job>-NNN-<hash>``) and reads each.
    """
    rows: list[dict[str, Any]]
    try:
        pages = sm.get_paginator("list_training_jobs_for_hyper_parameter_tuning_job").paginate(HyperParameterTuningJobName=tuning_job)
        rows = [_row(s) for page in pages for s in page["TrainingJobSummaries"]]
    except ClientError as exc:
        if exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) < 500:
            raise
        log.warning("event=trials_fallback tuning_job=%s reason=%s", tuning_job, exc.response.get("Error", {}).get("Code"))
        rows = []
        for page in sm.get_paginator("list_training_jobs").paginate(NameContains=tuning_job):
            for summary in page["TrainingJobSummaries"]:
                if not summary["TrainingJobName"].startswith(tuning_job + "-"):
                    continue
                job = sm.describe_training_job(TrainingJobName=summary["TrainingJobName"])
                final = {m["MetricName"]: m["Value"] for m in job.get("FinalMetricDataList", [])}
                rows.append(
                    {
                        "job": job["TrainingJobName"],
                        "status": job.get("TrainingJobStatus"),
                        OBJECTIVE_METRIC: final.get(OBJECTIVE_METRIC),
                        **user_hyperparameters(job.get("HyperParameters", {})),
                    }
                )
    return sorted(rows, key=lambda r: (r[OBJECTIVE_METRIC] is None, -(r[OBJECTIVE_METRIC] or 0.0)))


def table(
    rows: list[dict[str, Any]], columns: tuple[str, ...] = (OBJECTIVE_METRIC, "lr_scale", "batch_size", "weight_decay", "freeze", "model")
) -> str:
    """A plain-text table (also what the notebook shows)."""
    present = ["job", "status", *[c for c in columns if any(c in r for r in rows)]]
    cells = [[_cell(r.get(c)) for c in present] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) if cells else len(c) for i, c in enumerate(present)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(present, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
