"""The steps up to a trained model: data, weights, tune, best, train, reports."""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any

from deploy import checkpoints, results, sdk, services, tuning
from deploy.context import Context, StepError
from image_classifier.modeling.weights_io import safe_name

REQUIRED_CHANNELS = ("train", "validation")


def _inputs(ctx: Context, names: tuple[str, ...]) -> dict[str, Any]:
    """The job's channels; in a dry run, placeholders for those no earlier step produced."""
    channels = dict(ctx.state.channels)
    if ctx.dry_run:
        channels = {**{n: f"{ctx.cfg.s3_root}/data/{n}" for n in names if n != "pretrained"}, **channels}
    missing = [n for n in REQUIRED_CHANNELS if n not in channels]
    if missing:
        raise StepError(f"run {ctx.state.run_id} has no channels {missing}: run the 'data' step first")
    sharded = set(ctx.state.sharded)
    return {n: sdk.training_input(channels[n], sharded=n in sharded) for n in names if n in channels}


def _static_hyperparameters(ctx: Context, epochs: int | None) -> dict[str, str]:
    """Unset epochs stay unsent: the trainer's rule chooses them from the data (``image_classifier.defaults``)."""
    return {"model": ctx.cfg.model, **ctx.cfg.hyperparameters, **({"epochs": str(epochs)} if epochs else {})}


def step_data(ctx: Context) -> None:
    """Split (if needed), pre-flight check, shards for a large set (``data_format``), then upload; skips unchanged files."""
    from deploy import data

    if not ctx.data:
        raise StepError("the 'data' step needs --data PATH|URL (a folder of class folders or the dog-breed zip)")
    work = ctx.run_dir / "data" if not ctx.dry_run else Path(tempfile.mkdtemp(prefix="ic-dry-run-"))
    prepared = data.prepare(ctx.data, work)
    ctx.state.classes = list(prepared.classes)
    counts = " ".join(f"{k}={v}" for k, v in prepared.counts.items())
    said = f"event=data classes={len(prepared.classes)} {counts} unreadable={len(prepared.unreadable)}"
    if ctx.dry_run:  # the pre-flight ran for real; no shard is written and nothing uploaded
        sharded = [c for c in data.SHARDED_CHANNELS if c in prepared.channels]
        ctx.state.sharded = sharded if data.choose_format(ctx.cfg.data_format, prepared) == "shards" else []
        ctx.state.channels.update({n: f"{ctx.cfg.s3_root}/data/{n}/" for n in prepared.channels})
        ctx.say(f"{said} format={'shards' if ctx.state.sharded else 'folders'} dry_run=not_uploaded")
        return
    shards = data.shard_if_chosen(prepared, ctx.cfg.data_format, work / "shards")
    uploaded = data.upload(
        prepared, ctx.aws.client("s3"), ctx.cfg.bucket, f"{ctx.cfg.prefix}/data", kms_key_id=ctx.cfg.kms_key_id, sharded=shards
    )
    ctx.state.channels.update(uploaded.channels)
    ctx.state.sharded = sorted(shards)
    ctx.say(f"{said} format={'shards' if shards else 'folders'} uploaded={uploaded.uploaded} skipped={uploaded.skipped}")
    ctx.save()


def step_weights(ctx: Context) -> None:
    """The backbone's ImageNet weights as the ``pretrained`` channel (network isolation needs it).

    Fetching them needs torch and timm (``deploy.weights``), imported only when a file is missing.
    """
    models = ctx.cfg.search.models or [ctx.cfg.model]
    folder = ctx.pretrained_dir or ctx.run_dir / "pretrained"
    s3 = ctx.aws.client("s3")
    prefix = f"{ctx.cfg.prefix}/pretrained"
    for name in models:
        path = folder / f"{safe_name(name)}.safetensors"
        if not path.is_file():
            if ctx.dry_run:
                ctx.say(f"event=weights model={name} dry_run=would_fetch")
                continue
            from deploy import weights

            path = weights.fetch_weights(name, folder)
        extra = {"ServerSideEncryption": "aws:kms", "SSEKMSKeyId": ctx.cfg.kms_key_id} if ctx.cfg.kms_key_id else {}
        s3.upload_file(str(path), ctx.cfg.bucket, f"{prefix}/{path.name}", ExtraArgs=extra or None)
        ctx.say(f"event=weights model={name} uri=s3://{ctx.cfg.bucket}/{prefix}/{path.name}")
    ctx.state.channels["pretrained"] = f"s3://{ctx.cfg.bucket}/{prefix}/"
    ctx.save()


def step_tune(ctx: Context) -> None:
    estimator = sdk.estimator(
        ctx.cfg,
        ctx.sagemaker,
        image_uri=ctx.image_uri(),
        run_id=ctx.state.run_id,
        kind="tune",
        hyperparameters=_static_hyperparameters(ctx, ctx.cfg.tuning_epochs),
    )
    tuner = sdk.tuner(ctx.cfg, estimator, run_id=ctx.state.run_id)
    inputs = _inputs(ctx, ("train", "validation", "pretrained"))
    name = ctx.new_name("tune")
    ctx.record("hyper-parameter-tuning-job", name)
    tuner.fit(inputs, job_name=name, include_cls_metadata=False, wait=False)
    ctx.state.tuning_job = name
    ctx.save()
    limit = ctx.cfg.job_limit or "grid"
    ctx.say(f"event=tuning_started job={name} strategy={ctx.cfg.strategy} max_jobs={limit} parallel={ctx.cfg.max_parallel_jobs}")
    if not ctx.dry_run:
        status, described = _wait_for_tuning(ctx, name, estimator.checkpoint_s3_uri)
        ctx.say(f"event=tuning_done job={name} status={status}")
        if status == "Failed":
            raise StepError(f"tuning job {name} failed: {described.get('FailureReason', 'no reason given')}")


def _wait_for_tuning(ctx: Context, name: str, checkpoint_uri: str) -> tuple[str, dict[str, Any]]:
    """Until the tuning job ends, every ``wait_poll_s``; meanwhile ended trials' checkpoint folders go."""
    sm, s3 = ctx.aws.client("sagemaker"), ctx.aws.client("s3")
    said = ""
    while True:
        described = sm.describe_hyper_parameter_tuning_job(HyperParameterTuningJobName=name)
        status = described["HyperParameterTuningJobStatus"]
        counts = " ".join(f"{k.lower()}={v}" for k, v in sorted(described.get("TrainingJobStatusCounters", {}).items()))
        if counts != said:
            ctx.say(f"event=tuning_progress job={name} status={status} {counts}".rstrip())
            said = counts
        checkpoints.prune(s3, sm, checkpoint_uri, ctx.say)
        if status not in ("InProgress", "Stopping"):
            return status, described
        time.sleep(ctx.cfg.wait_poll_s)


def step_best(ctx: Context) -> None:
    tuning_job = ctx.need("tuning_job", "tune")
    if ctx.dry_run:
        return
    sm = ctx.aws.client("sagemaker")
    rows = tuning.trials(sm, tuning_job)
    (ctx.run_dir / "trials.json").write_text(json.dumps(rows, indent=2, default=str))
    ctx.say(tuning.table(rows))
    best = tuning.best_job(sm, tuning_job)
    ctx.state.best_job, ctx.state.best_hyperparameters, ctx.state.best_model_data = best.name, best.hyperparameters, best.model_data
    ctx.save()
    tuned = " ".join(f"{k}={best.hyperparameters[k]}" for k in sorted(best.hyperparameters))
    ctx.say(f"event=best_job job={best.name} objective={best.objective} {tuned}")


def step_train(ctx: Context) -> None:
    """The final job: best hyperparameters, more epochs, Debugger rules and the profiler where the account has them."""
    hyperparameters = _static_hyperparameters(ctx, ctx.cfg.final_epochs)
    hyperparameters.update({k: v for k, v in ctx.state.best_hyperparameters.items() if k != "epochs"})
    inputs = _inputs(ctx, ("train", "validation", "test", "pretrained"))
    final_checkpoints = sdk.checkpoint_uri(ctx.cfg, ctx.state.run_id, "final")
    if not ctx.dry_run:  # an earlier attempt's folder: never resumed (this job has a new name)
        checkpoints.prune(ctx.aws.client("s3"), ctx.aws.client("sagemaker"), final_checkpoints, ctx.say)
    name = ctx.new_name("final")
    ctx.record("training-job", name)

    def create(enabled: frozenset[str]) -> Any:
        estimator = sdk.estimator(
            ctx.cfg,
            ctx.sagemaker,
            image_uri=ctx.image_uri(),
            run_id=ctx.state.run_id,
            kind="final",
            hyperparameters=hyperparameters,
            services=enabled,
        )
        estimator.fit(inputs, job_name=name, wait=False)
        return estimator

    modes = {"debugger": ctx.cfg.debugger, "profiler": ctx.cfg.profiler}
    estimator, outcome = services.create_with_fallback(create, modes, ctx.say)
    ctx.state.services.update(outcome)
    ctx.state.final_job = name
    ctx.save()
    on = " ".join(f"{k}={v}" for k, v in outcome.items())
    ctx.say(f"event=training_started job={name} spot={ctx.cfg.use_spot} network_isolation={ctx.cfg.network_isolation} {on}")
    if ctx.dry_run:
        return
    estimator.latest_training_job.wait(logs="All" if ctx.cfg.stream_logs else "None")
    collect_reports(ctx)
    checkpoints.prune(ctx.aws.client("s3"), ctx.aws.client("sagemaker"), final_checkpoints, ctx.say)


def step_reports(ctx: Context) -> None:
    """Download the final job's reports again (e.g. after a job that outlived the terminal)."""
    collect_reports(ctx)


def collect_reports(ctx: Context) -> dict[str, Any]:
    name = ctx.need("final_job", "train")
    if ctx.dry_run:  # nothing to download: the job was never created
        return {}
    job = ctx.aws.client("sagemaker").describe_training_job(TrainingJobName=name)
    ctx.state.final_model_data = job["ModelArtifacts"]["S3ModelArtifacts"]
    found = results.download_reports(ctx.aws.client("s3"), job, ctx.run_dir / "reports")
    ctx.state.results["reports"] = {"files": [str(p) for p in found["files"]], "rules": found["rules"]}
    ctx.save()
    ctx.say(f"event=training_done job={name} status={job['TrainingJobStatus']} model_data={ctx.state.final_model_data}")
    for line in results.report_summary(found):
        ctx.say(line)
    return found
