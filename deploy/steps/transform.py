"""Batch transform over the test set (one JSON line per image) and its top-1 accuracy."""

from __future__ import annotations

from deploy import results, sdk
from deploy.context import Context, StepError
from deploy.steps.hosting import ensure_model


def step_transform(ctx: Context) -> None:
    model_name = ensure_model(ctx, ctx.cfg.transform_instance_type)
    test = ctx.state.channels.get("test") or (f"{ctx.cfg.s3_root}/data/test" if ctx.dry_run else None)
    if not test:
        raise StepError("the data set has no test split: run 'data' with a test/ folder")
    output = f"{ctx.cfg.s3_root}/runs/{ctx.state.run_id}/transform/"
    job = ctx.new_name("transform")
    transformer = sdk.transformer(ctx.cfg, ctx.sagemaker, model_name=model_name, output_path=output, run_id=ctx.state.run_id)
    ctx.record("transform-job", job)
    ctx.state.transform_job, ctx.state.transform_output = job, output
    ctx.save()
    transformer.transform(
        test.rstrip("/") + "/", content_type="application/x-image", split_type=None, job_name=job, wait=not ctx.dry_run, logs=False
    )
    if ctx.dry_run:
        return
    summary = results.transform_accuracy(ctx.aws.client("s3"), test, output)
    ctx.state.results["transform"] = summary
    ctx.save()
    ctx.say(
        f"event=transform_accuracy job={job} images={summary['images']} missing={summary['missing_outputs']} accuracy={summary['accuracy']}"
    )
