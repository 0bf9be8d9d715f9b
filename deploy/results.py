"""Bring a job's results home: the training reports, the profiler report, batch transform accuracy."""

from __future__ import annotations

import collections
import io
import json
import tarfile
from pathlib import Path, PurePosixPath
from typing import Any

from image_classifier.params import MODEL_CARD_FILE, REPORT_JSON_FILE


def split_s3(uri: str) -> tuple[str, str]:
    if not uri.startswith("s3://"):
        raise ValueError(f"not an s3:// URI: {uri!r}")
    bucket, _, key = uri[5:].partition("/")
    return bucket, key


def encryption(kms_key_id: str | None) -> dict[str, str]:
    """The arguments that write an object with the run's KMS key (none without one: the bucket's default)."""
    return {"ServerSideEncryption": "aws:kms", "SSEKMSKeyId": kms_key_id} if kms_key_id else {}


def list_keys(s3: Any, uri: str) -> list[str]:
    bucket, prefix = split_s3(uri)
    keys: list[str] = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        keys += [item["Key"] for item in page.get("Contents", [])]
    return keys


def download_prefix(s3: Any, uri: str, dest: Path) -> list[Path]:
    bucket, prefix = split_s3(uri)
    files = []
    for key in list_keys(s3, uri):
        relative = PurePosixPath(key).relative_to(prefix.rstrip("/")) if key != prefix else PurePosixPath(PurePosixPath(key).name)
        if ".." in relative.parts:
            continue
        target = dest / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        s3.download_file(bucket, key, str(target))
        files.append(target)
    return files


def _safe_extract(archive: tarfile.TarFile, dest: Path) -> list[Path]:
    """Regular files only, no absolute paths or ``..``: a job's archive is still input."""
    out = []
    for member in archive.getmembers():
        name = PurePosixPath(member.name)
        if not member.isfile() or name.is_absolute() or ".." in name.parts:
            continue
        handle = archive.extractfile(member)
        if handle is None:
            continue
        target = dest / Path(*name.parts)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(handle.read())
        out.append(target)
    return out


def model_card(s3: Any, model_data: str) -> dict[str, Any]:
    """The model card inside a ``model.tar.gz``, read as the archive streams (the weights are not kept)."""
    bucket, key = split_s3(model_data)
    body = s3.get_object(Bucket=bucket, Key=key)["Body"]
    with tarfile.open(fileobj=body, mode="r|gz") as archive:
        for member in archive:
            if member.isfile() and PurePosixPath(member.name).name == MODEL_CARD_FILE:
                handle = archive.extractfile(member)
                if handle is not None:
                    return json.loads(handle.read())
    raise ValueError(f"{model_data} holds no {MODEL_CARD_FILE}: is it a model of this image?")


def download_reports(s3: Any, job: dict[str, Any], dest: Path) -> dict[str, Any]:
    """``output.tar.gz`` (our report, metrics, plots) and Debugger/Profiler rule output, if any."""
    dest.mkdir(parents=True, exist_ok=True)
    model_data = job["ModelArtifacts"]["S3ModelArtifacts"]
    output_uri = model_data.rsplit("/", 1)[0] + "/output.tar.gz"
    found: dict[str, Any] = {"files": []}
    bucket, key = split_s3(output_uri)
    try:
        body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    except s3.exceptions.NoSuchKey:
        body = None
    if body is not None:
        with tarfile.open(fileobj=io.BytesIO(body), mode="r:gz") as archive:
            found["files"] += _safe_extract(archive, dest / "output")
    job_root = model_data.rsplit("/", 2)[0]  # <output_path>/<job-name>
    found["files"] += download_prefix(s3, f"{job_root}/rule-output/", dest / "rule-output")
    report = dest / "output" / REPORT_JSON_FILE
    if report.is_file():
        found["report"] = json.loads(report.read_text())
    found["profiler_report"] = next((str(p) for p in found["files"] if p.name == "profiler-report.html"), None)
    found["rules"] = [
        {"rule": s.get("RuleConfigurationName"), "status": s.get("RuleEvaluationStatus")}
        for s in job.get("DebugRuleEvaluationStatuses", []) + job.get("ProfilerRuleEvaluationStatuses", [])
    ]
    return found


def report_summary(found: dict[str, Any]) -> list[str]:
    """A few lines worth printing: final metrics, findings of the in-process checks, rule states."""
    lines = []
    report = found.get("report") or {}
    if report:
        metrics = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in report.get("final_metrics", {}).items())
        lines.append(f"event=training_report status={report.get('status')} model={report.get('model')} {metrics}".rstrip())
        for finding in report.get("findings", []):
            lines.append(f"event=finding check={finding.get('rule')} epoch={finding.get('epoch')} detail={finding.get('message')!r}")
    for rule in found.get("rules", []):
        lines.append(f"event=rule name={rule['rule']} status={rule['status']}")
    if found.get("profiler_report"):
        lines.append(f"event=profiler_report file={found['profiler_report']}")
    return lines


def transform_accuracy(s3: Any, input_uri: str, output_uri: str) -> dict[str, Any]:
    """Top-1 accuracy of a batch transform over ``<input>/<class>/<image>``: each ``.out`` holds JSON lines."""
    _, in_prefix = split_s3(input_uri.rstrip("/") + "/")
    out_bucket, out_prefix = split_s3(output_uri.rstrip("/") + "/")
    per_class: dict[str, list[int]] = collections.defaultdict(lambda: [0, 0])
    missing = 0
    for key in list_keys(s3, input_uri.rstrip("/") + "/"):
        relative = key[len(in_prefix) :]
        parts = PurePosixPath(relative).parts
        if len(parts) < 2:
            continue
        truth = parts[-2]
        try:
            body = s3.get_object(Bucket=out_bucket, Key=out_prefix + relative + ".out")["Body"].read()
        except s3.exceptions.NoSuchKey:
            missing += 1
            continue
        first = json.loads(body.decode().splitlines()[0])
        stats = per_class[truth]
        stats[0] += int(first["label"] == truth)
        stats[1] += 1
    total = sum(n for _, n in per_class.values())
    correct = sum(c for c, _ in per_class.values())
    return {
        "images": total,
        "missing_outputs": missing,
        "accuracy": correct / total if total else None,
        "per_class": {k: c / n for k, (c, n) in sorted(per_class.items())},
    }
