"""SHAP heat maps for a few test images with SageMaker Clarify, where the account still has it.

Clarify starts a shadow endpoint of the model and calls it with perturbed images; the analysis
config tells it which numbers in our answer are the class probabilities (``predictions[0].
probabilities``, present with ``probabilities=true``) and their names, in the same order
(``label_headers``: the model card's classes). The job runs without network isolation (it
must reach its shadow endpoint), with the output and volume KMS keys and a runtime limit.

``clarify = "auto"``: where SageMaker refuses the Clarify job at creation (``deploy.services``:
by the kind of error, not its text) or the job fails as a closed service (by its text), the step
is skipped with one line naming the project's own alternative; ``"on"`` fails; ``"off"`` skips.
"""

from __future__ import annotations

from typing import Any

from botocore.exceptions import ClientError

from deploy import results, sdk, services
from deploy.context import Context, StepError
from deploy.steps.hosting import confirm, ensure_model

CLARIFY_IMAGES = 4


def _copy_sample_images(ctx: Context, dest: str) -> None:
    s3 = ctx.aws.client("s3")
    test = ctx.need("channels", "data").get("test") or ctx.state.channels["validation"]
    bucket, _ = results.split_s3(test)
    dest_bucket, dest_prefix = results.split_s3(dest)
    _, test_prefix = results.split_s3(test.rstrip("/") + "/")
    keys = [k for k in results.list_keys(s3, test.rstrip("/") + "/") if not k.endswith("/")][:CLARIFY_IMAGES]
    for key in keys:
        s3.copy_object(
            Bucket=dest_bucket,
            Key=dest_prefix + key[len(test_prefix) :].replace("/", "-"),  # ant/0.png -> ant-0.png: one flat folder, no name clash
            CopySource={"Bucket": bucket, "Key": key},
            **results.encryption(ctx.cfg.kms_key_id),  # a copy is a new object: without these, the bucket's default
        )


def _labels(ctx: Context) -> list[str] | None:
    """The served model's classes, in index order: from its model card (a dry run: from the data step, if it ran)."""
    if ctx.dry_run:
        return ctx.state.classes or None
    card = results.model_card(ctx.aws.client("s3"), ctx.need("final_model_data", "train"))
    return list(card["classes"])


def _skip(ctx: Context, reason: str, outcome: str) -> None:
    ctx.state.services["clarify"] = outcome
    ctx.save()
    alternative = services.CLARIFY_ALTERNATIVE.replace("<run>", ctx.state.run_id)
    ctx.say(f"event=clarify_skipped reason={reason} alternative={alternative!r}")


def _refused(ctx: Context, exc: BaseException, *, failed_job: bool) -> bool:
    """True when ``exc`` is Clarify being refused and the mode lets the run go on without it."""
    if not (services.failed_as_closed(exc) if failed_job else services.refused_at_creation(exc)):
        return False
    if ctx.cfg.clarify == "on":
        raise StepError(f'SageMaker refused Clarify ({services.describe(exc)}); set clarify = "off" or "auto" to go on without it') from exc
    ctx.say(f"event=service_unavailable service=clarify mode=auto action=skip_step {services.describe(exc)}")
    return True


def step_clarify(ctx: Context) -> None:
    if ctx.cfg.clarify == "off":
        _skip(ctx, "clarify=off", "off")
        return
    confirm(ctx, "a Clarify job (it starts a shadow endpoint)")
    model_name = ensure_model(ctx, ctx.cfg.clarify_instance_type)
    images = f"{ctx.cfg.s3_root}/runs/{ctx.state.run_id}/clarify-input/"
    output = f"{ctx.cfg.s3_root}/runs/{ctx.state.run_id}/clarify/"
    if not ctx.dry_run:
        _copy_sample_images(ctx, images)
    parts = sdk.clarify_job(
        ctx.cfg, ctx.sagemaker, model_name=model_name, images_uri=images, output_uri=output, run_id=ctx.state.run_id, labels=_labels(ctx)
    )
    processor: Any = parts.pop("processor")
    job = ctx.new_name("clarify")
    ctx.record("processing-job", job)
    ctx.state.clarify_job = job
    ctx.save()
    try:
        processor.run_explainability(**parts, wait=False, logs=False, job_name=job, kms_key=ctx.cfg.kms_key_id)
    except ClientError as exc:
        if _refused(ctx, exc, failed_job=False):
            _skip(ctx, "service_refused", "refused")
            return
        raise
    if ctx.dry_run:
        return
    try:
        processor.latest_job.wait(logs=False)
    except Exception as exc:  # the SDK's UnexpectedStatusException carries the job's FailureReason
        if _refused(ctx, exc, failed_job=True):
            _skip(ctx, "service_refused", "refused")
            return
        raise
    ctx.state.services["clarify"] = "on"
    files = results.download_prefix(ctx.aws.client("s3"), output, ctx.run_dir / "clarify")
    ctx.say(f"event=clarify_done job={job} files={len(files)} output={output}")
