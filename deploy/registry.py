"""The SageMaker Model Registry: one model package group, one version per final model of a run.

A version holds what it takes to serve and to judge the model without the run's folder:

- ``InferenceSpecification``: the image by digest and the model artifact (``model.tar.gz``), the
  content types the server takes and the instance types the configuration uses;
- ``ModelMetrics.ModelQuality.Statistics``: the registry's model-quality JSON in S3 (test accuracy
  and loss, calibration before and after temperature scaling), written under the run's prefix with
  the run's KMS key (``metrics_document``);
- ``CustomerMetadataProperties``: the headline figures and where the model came from (run, final
  and tuning jobs, architecture, the model card's S3 copy; ``headline``), shown by ``models``;
- ``ModelApprovalStatus``: ``PendingManualApproval`` unless the configuration says otherwise;
  ``approve``/``reject`` change it, and ``promote`` deploys approved versions only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from botocore.exceptions import ClientError

CONTENT_TYPES = ["image/jpeg", "image/png", "application/x-image", "application/json"]
METRICS_CONTENT_TYPE = "application/json"
STATUSES = ("Approved", "Rejected", "PendingManualApproval")


@dataclass
class Version:
    """One model package of the group, as ``models`` prints it."""

    number: int
    arn: str
    status: str
    image: str
    model_data: str
    metadata: dict[str, str] = field(default_factory=dict)
    live: list[str] = field(default_factory=list)  # endpoints serving it

    def line(self) -> str:
        figures = " ".join(f"{k}={self.metadata[k]}" for k in ("test_acc", "test_loss", "ece_after") if k in self.metadata)
        live = ",".join(self.live) or "none"
        return f"event=model_version version={self.number} status={self.status} run_id={self.metadata.get('run_id', '?')} {figures} live={live}"


def ensure_group(sm: Any, group: str, tags: list[dict[str, str]], *, dry_run: bool = False) -> str:
    """The group's ARN, created (with ``tags``) when missing (a dry run shows the creation)."""
    try:
        if not dry_run:
            return sm.describe_model_package_group(ModelPackageGroupName=group)["ModelPackageGroupArn"]
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") != "ValidationException":
            raise
    description = "image-classifier: one version per final model (python -m deploy.pipeline models)"
    return sm.create_model_package_group(ModelPackageGroupName=group, ModelPackageGroupDescription=description, Tags=tags)[
        "ModelPackageGroupArn"
    ]


def _figure(value: Any) -> str:
    return f"{float(value):.4f}"


def metrics_document(card: dict[str, Any]) -> dict[str, Any]:
    """The registry's model-quality statistics (multiclass), from the model card's final metrics and calibration."""
    metrics = card.get("metrics") or {}
    quality: dict[str, Any] = {}
    for ours, theirs in (("test_acc", "accuracy"), ("test_loss", "cross_entropy_loss"), ("best_valid_acc", "validation_accuracy")):
        if ours in metrics:
            quality[theirs] = {"value": float(metrics[ours]), "standard_deviation": "NaN"}
    for split, values in (card.get("calibration") or {}).items():
        for key, value in values.items():
            quality[f"{split}_{key}"] = {"value": float(value), "standard_deviation": "NaN"}
    if card.get("temperature") is not None:
        quality["temperature"] = {"value": float(card["temperature"]), "standard_deviation": "NaN"}
    return {"version": 0.0, "multiclass_classification_metrics": quality, "classes": card.get("classes", [])}


def headline(card: dict[str, Any], *, run_id: str, final_job: str, tuning_job: str | None, card_uri: str | None) -> dict[str, str]:
    """CustomerMetadataProperties: short values only (letters, digits, spaces and ``_.:/=+-@``; at most 256)."""
    metrics = card.get("metrics") or {}
    out = {"run_id": run_id, "training_job": final_job, "architecture": str(card.get("architecture", "unknown"))}
    if tuning_job:
        out["tuning_job"] = tuning_job
    for key in ("test_acc", "test_loss", "best_valid_acc"):
        if key in metrics:
            out[key] = _figure(metrics[key])
    test_calibration = (card.get("calibration") or {}).get("test") or {}
    if "ece_after" in test_calibration:
        out["ece_after"] = _figure(test_calibration["ece_after"])
    if card.get("temperature") is not None:
        out["temperature"] = _figure(card["temperature"])
    out["classes"] = str(card.get("num_classes", len(card.get("classes", []))))
    if card.get("weights_sha256"):
        out["weights_sha256"] = str(card["weights_sha256"])
    if card_uri:
        out["model_card"] = card_uri
    return out


def package_request(
    *,
    group: str,
    image: str,
    model_data: str,
    metrics_uri: str,
    metadata: dict[str, str],
    approval: str,
    instance_types: tuple[str, str],
    tags: list[dict[str, str]],
) -> dict[str, Any]:
    """The CreateModelPackage request (``instance_types``: real-time, transform)."""
    description = f"{metadata.get('architecture', 'model')} from run {metadata.get('run_id')}"
    if "test_acc" in metadata:
        description += f", test accuracy {metadata['test_acc']}"
    return {
        "ModelPackageGroupName": group,
        "ModelPackageDescription": description,
        "InferenceSpecification": {
            "Containers": [{"Image": image, "ModelDataUrl": model_data}],
            "SupportedContentTypes": CONTENT_TYPES,
            "SupportedResponseMIMETypes": ["application/json"],
            "SupportedRealtimeInferenceInstanceTypes": [instance_types[0]],
            "SupportedTransformInstanceTypes": [instance_types[1]],
        },
        "ModelMetrics": {"ModelQuality": {"Statistics": {"ContentType": METRICS_CONTENT_TYPE, "S3Uri": metrics_uri}}},
        "MetadataProperties": {"GeneratedBy": metadata["training_job"], "ProjectId": metadata["run_id"]},
        "CustomerMetadataProperties": metadata,
        "ModelApprovalStatus": approval,
        "Tags": tags,
    }


def _version(described: dict[str, Any]) -> Version:
    container = described.get("InferenceSpecification", {}).get("Containers", [{}])[0]
    return Version(
        number=int(described.get("ModelPackageVersion") or described["ModelPackageArn"].rsplit("/", 1)[-1]),
        arn=described["ModelPackageArn"],
        status=described.get("ModelApprovalStatus", "unknown"),
        image=container.get("Image", ""),
        model_data=container.get("ModelDataUrl", ""),
        metadata=dict(described.get("CustomerMetadataProperties") or {}),
    )


def versions(sm: Any, group: str) -> list[Version]:
    """Every version of the group, oldest first, described (metadata and image); [] when the group does not exist."""
    arns = []
    try:
        for page in sm.get_paginator("list_model_packages").paginate(ModelPackageGroupName=group):
            arns += [item["ModelPackageArn"] for item in page.get("ModelPackageSummaryList", [])]
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") != "ValidationException":
            raise
        return []
    found = [_version(sm.describe_model_package(ModelPackageName=arn)) for arn in arns]
    return sorted(found, key=lambda v: v.number)


def find(found: list[Version], number: int | None, *, approved_only: bool = False) -> Version | None:
    """Version ``number``, or the newest (approved, with ``approved_only``) when None."""
    if number is not None:
        return next((v for v in found if v.number == number), None)
    candidates = [v for v in found if v.status == "Approved" or not approved_only]
    return candidates[-1] if candidates else None


def set_status(sm: Any, version: Version, status: str, reason: str) -> None:
    sm.update_model_package(ModelPackageArn=version.arn, ModelApprovalStatus=status, ApprovalDescription=reason[:1024])


def version_of_model(sm: Any, model_name: str) -> str | None:
    """The model package a SageMaker model was created from (``PrimaryContainer.ModelPackageName``)."""
    try:
        container = sm.describe_model(ModelName=model_name).get("PrimaryContainer", {})
    except ClientError:
        return None
    return container.get("ModelPackageName")
