"""The AWS pipeline, one function per step, each runnable alone (state carries between them).

    python -m deploy.pipeline data --data ~/dogImages.zip      # split, pre-flight, upload
    python -m deploy.pipeline weights                          # ImageNet weights -> pretrained channel
    python -m deploy.pipeline tune best train                  # tuning, best trial, profiled final job
    python -m deploy.pipeline deploy query --yes               # real-time endpoint + top-5 of a sample
    python -m deploy.pipeline mme transform clarify --yes      # the optional steps
    python -m deploy.pipeline cleanup                          # endpoints, configs, models of this run
    python -m deploy.pipeline all --data PATH --yes            # data weights tune best train deploy query

``--dry-run`` prints every create request as JSON (validated by botocore against the service
model) and sends nothing. Billable endpoints need ``--yes``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deploy import config as config_module
from deploy import results, sdk, tuning
from deploy.aws import Aws, tag_list
from deploy.cleanup import cleanup as cleanup_resources
from deploy.config import ConfigError, DeployConfig
from deploy.state import RunState, load_state, new_run_id

log = logging.getLogger("deploy")

BILLABLE = ("deploy", "mme", "clarify")
DEFAULT_STEPS = ("data", "weights", "tune", "best", "train", "deploy", "query")
CLARIFY_IMAGES = 4


class StepError(RuntimeError):
    """A step cannot run (a missing earlier step, a refused confirmation)."""


@dataclass
class Context:
    cfg: DeployConfig
    aws: Aws
    state: RunState
    yes: bool = False
    data: str | None = None
    pretrained_dir: Path | None = None
    sample: Path | None = None
    all_runs: bool = False
    lines: list[str] = field(default_factory=list)

    @property
    def dry_run(self) -> bool:
        return self.aws.dry_run is not None

    @property
    def run_dir(self) -> Path:
        return self.state.folder(self.cfg.runs_dir)

    def say(self, line: str) -> None:
        """Events to stdout; in a dry run to stderr, so that stdout is exactly the JSON of the requests."""
        self.lines.append(line)
        print(line, file=sys.stderr if self.dry_run else sys.stdout, flush=True)

    def save(self) -> None:
        if not self.dry_run:
            self.state.save(self.cfg.runs_dir)

    def image_uri(self) -> str:
        if self.state.image_uri is None:
            self.state.image_uri = self.cfg.image(self.aws.account())
        return self.state.image_uri

    def need(self, attribute: str, step: str) -> Any:
        value = getattr(self.state, attribute)
        if value is None and self.dry_run:  # placeholders of the right shape for the printed requests
            return f"{self.cfg.s3_root}/runs/dry-run/{attribute}"
        if not value:
            raise StepError(f"run {self.state.run_id} has no {attribute}: run the '{step}' step first")
        return value

    def job_name(self, kind: str) -> str:
        """SageMaker names: at most 32 characters for tuning jobs, 63 elsewhere."""
        return f"ic-{kind}-{self.state.run_id}"[: 32 if kind == "tune" else 63]


def _inputs(ctx: Context, names: tuple[str, ...]) -> dict[str, Any]:
    from sagemaker.inputs import TrainingInput

    channels = ctx.state.channels or ({n: f"{ctx.cfg.s3_root}/data/{n}" for n in names} if ctx.dry_run else {})
    missing = [n for n in ("train", "validation") if n not in channels]
    if missing:
        raise StepError(f"run {ctx.state.run_id} has no channels {missing}: run the 'data' step first")
    return {n: TrainingInput(channels[n], distribution="FullyReplicated") for n in names if n in channels}


def _static_hyperparameters(ctx: Context, epochs: int) -> dict[str, str]:
    return {"model": ctx.cfg.model, **ctx.cfg.hyperparameters, "epochs": str(epochs)}


# --- steps -----------------------------------------------------------------------------------


def step_data(ctx: Context) -> None:
    """Split (if needed), pre-flight check, then upload the data set; skips unchanged files."""
    from deploy import data

    if not ctx.data:
        raise StepError("the 'data' step needs --data PATH|URL (a folder of class folders or the dog-breed zip)")
    work = ctx.run_dir / "data" if not ctx.dry_run else Path(tempfile.mkdtemp(prefix="ic-dry-run-"))
    prepared = data.prepare(ctx.data, work)
    counts = " ".join(f"{k}={v}" for k, v in prepared.counts.items())
    if ctx.dry_run:  # the pre-flight ran for real; the upload would be one PutObject per changed file
        ctx.state.channels.update({n: f"{ctx.cfg.s3_root}/data/{n}/" for n in prepared.channels})
        ctx.say(f"event=data classes={len(prepared.classes)} {counts} unreadable={len(prepared.unreadable)} dry_run=not_uploaded")
        return
    uploaded = data.upload(prepared, ctx.aws.client("s3"), ctx.cfg.bucket, f"{ctx.cfg.prefix}/data", kms_key_id=ctx.cfg.kms_key_id)
    ctx.state.channels.update(uploaded.channels)
    ctx.say(
        f"event=data classes={len(prepared.classes)} {counts} unreadable={len(prepared.unreadable)} "
        f"uploaded={uploaded.uploaded} skipped={uploaded.skipped}"
    )
    ctx.save()


def step_weights(ctx: Context) -> None:
    """The backbone's ImageNet weights as the ``pretrained`` channel (network isolation needs it)."""
    from deploy import weights

    models = ctx.cfg.search.models or [ctx.cfg.model]
    folder = ctx.pretrained_dir or ctx.run_dir / "pretrained"
    s3 = ctx.aws.client("s3")
    prefix = f"{ctx.cfg.prefix}/pretrained"
    for name in models:
        from image_classifier.modeling.weights_io import safe_name

        path = folder / f"{safe_name(name)}.safetensors"
        if not path.is_file():
            if ctx.dry_run:
                ctx.say(f"event=weights model={name} dry_run=would_fetch")
                continue
            path = weights.fetch_weights(name, folder)
        extra = {"ServerSideEncryption": "aws:kms", "SSEKMSKeyId": ctx.cfg.kms_key_id} if ctx.cfg.kms_key_id else {}
        s3.upload_file(str(path), ctx.cfg.bucket, f"{prefix}/{path.name}", ExtraArgs=extra or None)
        ctx.say(f"event=weights model={name} uri=s3://{ctx.cfg.bucket}/{prefix}/{path.name}")
    ctx.state.channels["pretrained"] = f"s3://{ctx.cfg.bucket}/{prefix}/"
    ctx.save()


def step_tune(ctx: Context) -> None:
    estimator = sdk.estimator(
        ctx.cfg,
        ctx.aws.sagemaker,
        image_uri=ctx.image_uri(),
        run_id=ctx.state.run_id,
        kind="tune",
        hyperparameters=_static_hyperparameters(ctx, ctx.cfg.tuning_epochs),
        profiled=False,
    )
    tuner = sdk.tuner(ctx.cfg, estimator, run_id=ctx.state.run_id)
    name = ctx.job_name("tune")
    tuner.fit(_inputs(ctx, ("train", "validation", "pretrained")), job_name=name, include_cls_metadata=False, wait=False)
    ctx.state.tuning_job = name
    ctx.save()
    ctx.say(f"event=tuning_started job={name} max_jobs={ctx.cfg.max_jobs} parallel={ctx.cfg.max_parallel_jobs}")
    if not ctx.dry_run:
        tuner.wait()
        status = ctx.aws.client("sagemaker").describe_hyper_parameter_tuning_job(HyperParameterTuningJobName=name)
        ctx.say(f"event=tuning_done job={name} status={status['HyperParameterTuningJobStatus']}")


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
    """The final job: best hyperparameters, more epochs, Debugger rules and the profiler."""
    hyperparameters = {**_static_hyperparameters(ctx, ctx.cfg.final_epochs)}
    tuned = {k: v for k, v in ctx.state.best_hyperparameters.items() if k not in ("epochs",)}
    hyperparameters.update(tuned)
    estimator = sdk.estimator(
        ctx.cfg,
        ctx.aws.sagemaker,
        image_uri=ctx.image_uri(),
        run_id=ctx.state.run_id,
        kind="final",
        hyperparameters=hyperparameters,
        profiled=True,
    )
    name = ctx.job_name("final")
    estimator.fit(
        _inputs(ctx, ("train", "validation", "test", "pretrained")),
        job_name=name,
        wait=not ctx.dry_run,
        logs="All" if ctx.cfg.stream_logs else "None",
    )
    ctx.state.final_job = name
    ctx.save()
    ctx.say(f"event=training_started job={name} spot={ctx.cfg.use_spot} network_isolation={ctx.cfg.network_isolation}")
    if ctx.dry_run:
        return
    collect_reports(ctx)


def step_reports(ctx: Context) -> None:
    """Download the final job's reports again (e.g. after a job that outlived the terminal)."""
    collect_reports(ctx)


def collect_reports(ctx: Context) -> dict[str, Any]:
    name = ctx.need("final_job", "train")
    job = ctx.aws.client("sagemaker").describe_training_job(TrainingJobName=name)
    ctx.state.final_model_data = job["ModelArtifacts"]["S3ModelArtifacts"]
    found = results.download_reports(ctx.aws.client("s3"), job, ctx.run_dir / "reports")
    ctx.state.results["reports"] = {"files": [str(p) for p in found["files"]], "rules": found["rules"]}
    ctx.save()
    ctx.say(f"event=training_done job={name} status={job['TrainingJobStatus']} model_data={ctx.state.final_model_data}")
    for line in results.report_summary(found):
        ctx.say(line)
    return found


def _confirm(ctx: Context, what: str) -> None:
    if not ctx.yes and not ctx.dry_run:
        raise StepError(f"{what} is billable while it runs: pass --yes to create it (and run 'cleanup' afterwards)")


def step_deploy(ctx: Context) -> None:
    _confirm(ctx, "a real-time endpoint")
    model_data = ctx.need("final_model_data", "train")
    name = ctx.job_name("model")
    model = sdk.model(ctx.cfg, ctx.aws.sagemaker, image_uri=ctx.image_uri(), model_data=model_data, name=name)
    endpoint = ctx.job_name("endpoint")
    model.deploy(
        initial_instance_count=1,
        instance_type=ctx.cfg.endpoint_instance_type,
        endpoint_name=endpoint,
        tags=tag_list(ctx.state.run_id, ctx.cfg.tags),
        kms_key=ctx.cfg.kms_key_id,
        wait=not ctx.dry_run,
    )
    ctx.state.model_name, ctx.state.endpoint = name, endpoint
    ctx.save()
    ctx.say(f"event=endpoint_in_service endpoint={endpoint} instance_type={ctx.cfg.endpoint_instance_type}")


def _sample_bytes(ctx: Context) -> tuple[bytes, str]:
    if ctx.sample is not None:
        return ctx.sample.read_bytes(), ctx.sample.name
    test = ctx.state.channels.get("test") or ctx.state.channels.get("validation")
    if not test:
        raise StepError("no sample image: pass --sample FILE or run the 'data' step")
    s3 = ctx.aws.client("s3")
    key = next((k for k in results.list_keys(s3, test.rstrip("/") + "/") if not k.endswith("/")), None)
    if key is None:
        raise StepError(f"no image under {test}")
    bucket, _ = results.split_s3(test)
    return s3.get_object(Bucket=bucket, Key=key)["Body"].read(), key


def _top(answer: dict[str, Any]) -> list[str]:
    prediction = answer["predictions"][0]
    return [f"  {entry['probability']:.3f}  {entry['label']}" for entry in prediction["top_k"]]


def step_query(ctx: Context) -> None:
    endpoint = ctx.need("endpoint", "deploy")
    if ctx.dry_run:
        return
    body, name = _sample_bytes(ctx)
    answer = sdk.predictor(endpoint, ctx.aws.sagemaker).predict(sdk.image_payload(body), initial_args={"CustomAttributes": "top_k=5"})
    ctx.state.results["query"] = {"sample": name, "answer": answer}
    ctx.save()
    ctx.say(f"event=prediction endpoint={endpoint} sample={name} label={answer['predictions'][0]['label']}")
    for line in _top(answer):
        ctx.say(line)


def step_mme(ctx: Context) -> None:
    """A multi-model endpoint serving the final model and the best tuning trial's model."""
    _confirm(ctx, "a multi-model endpoint")
    artifacts = {"final.tar.gz": ctx.need("final_model_data", "train"), "best-trial.tar.gz": ctx.need("best_model_data", "best")}
    name = ctx.job_name("mme")
    mme = sdk.multi_model(
        ctx.cfg, ctx.aws.sagemaker, image_uri=ctx.image_uri(), name=name, prefix=f"{ctx.cfg.s3_root}/runs/{ctx.state.run_id}/mme/"
    )
    mme.deploy(
        initial_instance_count=1,
        instance_type=ctx.cfg.endpoint_instance_type,
        endpoint_name=name,
        tags=tag_list(ctx.state.run_id, ctx.cfg.tags),
        kms_key=ctx.cfg.kms_key_id,
        wait=not ctx.dry_run,
    )
    ctx.state.multi_model_endpoint = name
    ctx.save()
    if ctx.dry_run:
        return
    body, sample = _sample_bytes(ctx)
    predictor = sdk.predictor(name, ctx.aws.sagemaker)
    answers = {}
    for target, source in artifacts.items():
        mme.add_model(model_data_source=source, model_data_path=target)
        answer = predictor.predict(sdk.image_payload(body), target_model=target)
        answers[target] = answer
        ctx.say(f"event=prediction endpoint={name} target_model={target} sample={sample} label={answer['predictions'][0]['label']}")
    ctx.state.results["mme"] = answers
    ctx.save()


def _ensure_model(ctx: Context) -> str:
    if ctx.state.model_name:
        return ctx.state.model_name
    name = ctx.job_name("model")
    model = sdk.model(ctx.cfg, ctx.aws.sagemaker, image_uri=ctx.image_uri(), model_data=ctx.need("final_model_data", "train"), name=name)
    model.create(instance_type=ctx.cfg.transform_instance_type, tags=tag_list(ctx.state.run_id, ctx.cfg.tags))
    ctx.state.model_name = name
    ctx.save()
    return name


def step_transform(ctx: Context) -> None:
    """Batch transform over the test set (one JSON line per image) and its top-1 accuracy."""
    model_name = _ensure_model(ctx)
    test = ctx.state.channels.get("test") or (f"{ctx.cfg.s3_root}/data/test" if ctx.dry_run else None)
    if not test:
        raise StepError("the data set has no test split: run 'data' with a test/ folder")
    output = f"{ctx.cfg.s3_root}/runs/{ctx.state.run_id}/transform/"
    job = ctx.job_name("transform")
    transformer = sdk.transformer(ctx.cfg, ctx.aws.sagemaker, model_name=model_name, output_path=output, run_id=ctx.state.run_id)
    transformer.transform(
        test.rstrip("/") + "/", content_type="application/x-image", split_type=None, job_name=job, wait=not ctx.dry_run, logs=False
    )
    ctx.state.transform_job, ctx.state.transform_output = job, output
    ctx.save()
    if ctx.dry_run:
        return
    summary = results.transform_accuracy(ctx.aws.client("s3"), test, output)
    ctx.state.results["transform"] = summary
    ctx.save()
    ctx.say(
        f"event=transform_accuracy job={job} images={summary['images']} missing={summary['missing_outputs']} accuracy={summary['accuracy']}"
    )


def step_clarify(ctx: Context) -> None:
    """SHAP heat maps for a few test images (Clarify starts a shadow endpoint of the model)."""
    _confirm(ctx, "a Clarify job (it starts a shadow endpoint)")
    model_name = _ensure_model(ctx)
    images = f"{ctx.cfg.s3_root}/runs/{ctx.state.run_id}/clarify-input/"
    output = f"{ctx.cfg.s3_root}/runs/{ctx.state.run_id}/clarify/"
    if not ctx.dry_run:
        _copy_sample_images(ctx, images)
    parts = sdk.clarify_job(
        ctx.cfg, ctx.aws.sagemaker, model_name=model_name, images_uri=images, output_uri=output, run_id=ctx.state.run_id
    )
    job = ctx.job_name("clarify")
    parts.pop("processor").run_explainability(**parts, wait=not ctx.dry_run, logs=False, job_name=job, kms_key=ctx.cfg.kms_key_id)
    ctx.state.clarify_job = job
    ctx.save()
    if not ctx.dry_run:
        files = results.download_prefix(ctx.aws.client("s3"), output, ctx.run_dir / "clarify")
        ctx.say(f"event=clarify_done job={job} files={len(files)} output={output}")


def _copy_sample_images(ctx: Context, dest: str) -> None:
    s3 = ctx.aws.client("s3")
    test = ctx.need("channels", "data").get("test") or ctx.state.channels["validation"]
    bucket, _ = results.split_s3(test)
    dest_bucket, dest_prefix = results.split_s3(dest)
    keys = [k for k in results.list_keys(s3, test.rstrip("/") + "/") if not k.endswith("/")][:CLARIFY_IMAGES]
    for key in keys:
        s3.copy_object(Bucket=dest_bucket, Key=dest_prefix + key.rsplit("/", 1)[-1], CopySource={"Bucket": bucket, "Key": key})


def step_cleanup(ctx: Context) -> None:
    """Every endpoint, endpoint config and model tagged with this run (``--all-runs``: this project)."""
    deleted = cleanup_resources(ctx.aws.client("sagemaker"), None if ctx.all_runs else ctx.state.run_id)
    for kind, name in deleted:
        ctx.say(f"event=deleted kind={kind} name={name}")
    ctx.say(f"event=cleanup_done run_id={ctx.state.run_id} deleted={len(deleted)}")
    for attribute in ("endpoint", "multi_model_endpoint", "model_name"):
        setattr(ctx.state, attribute, None)
    ctx.save()


STEPS: dict[str, Callable[[Context], None]] = {
    "data": step_data,
    "weights": step_weights,
    "tune": step_tune,
    "best": step_best,
    "train": step_train,
    "reports": step_reports,
    "deploy": step_deploy,
    "query": step_query,
    "mme": step_mme,
    "transform": step_transform,
    "clarify": step_clarify,
    "cleanup": step_cleanup,
}


def run(steps: list[str], ctx: Context) -> Context:
    """Run the steps in order; a dry run then prints the recorded requests, alone on stdout."""
    with _stdout_to_stderr(ctx.dry_run):
        for name in steps:
            log.info("event=step name=%s run_id=%s dry_run=%s", name, ctx.state.run_id, ctx.dry_run)
            STEPS[name](ctx)
    if ctx.aws.dry_run is not None:
        print(ctx.aws.dry_run.dump(), flush=True)
    return ctx


@contextlib.contextmanager
def _stdout_to_stderr(active: bool) -> Iterator[None]:
    """At the file-descriptor level: the SDK prints through handlers that hold the original stdout."""
    if not active:
        yield
        return
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def context(
    cfg: DeployConfig, *, run_id: str | None = None, new_run: bool = False, dry_run: bool = False, yes: bool = False, **options: Any
) -> Context:
    """What the notebook and the CLI both start from: the named run, a new one, or the latest."""
    if dry_run:
        state = RunState(run_id=run_id or "dry-run")
    elif new_run and run_id is None:
        state = RunState(run_id=new_run_id())
    else:
        state = load_state(cfg.runs_dir, run_id)
    return Context(cfg=cfg, aws=Aws.connect(cfg.region, dry_run=dry_run), state=state, yes=yes, **options)


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("steps", nargs="+", choices=[*STEPS, "all"], help="steps to run, in order")
    parser.add_argument("--run-id", default=None, help="continue this run (default: the latest; a new one for 'all' and 'data')")
    parser.add_argument("--dry-run", action="store_true", help="print the create requests as JSON; send nothing")
    parser.add_argument("--yes", action="store_true", help="allow billable endpoints")
    parser.add_argument("--data", default=None, help="data set: a folder of class folders, train/valid/test folders, or a zip path/URL")
    parser.add_argument("--pretrained-dir", type=Path, default=None, help="folder with <model>.safetensors (skips the download)")
    parser.add_argument("--sample", type=Path, default=None, help="image to send to the endpoint (default: the first test image)")
    parser.add_argument("--all-runs", action="store_true", help="cleanup: every run of this project, not only this one")
    parser.add_argument("--with", dest="optional", default="", help="with 'all': comma-separated mme,transform,clarify")
    config_module.add_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    args = get_args_parser().parse_args(argv)
    steps = [s for s in args.steps if s != "all"]
    if "all" in args.steps:
        optional = [s for s in args.optional.split(",") if s]
        unknown = set(optional) - {"mme", "transform", "clarify"}
        if unknown:
            print(f"error: --with takes mme, transform, clarify; got {sorted(unknown)}", file=sys.stderr)
            return 2
        steps = [s for s in DEFAULT_STEPS if s != "data" or args.data] + optional
        if not args.yes and not args.dry_run:  # everything up to the trained model; endpoints wait for --yes
            held = [s for s in steps if s in (*BILLABLE, "query")]
            steps = [s for s in steps if s not in held]
            print(f"event=skipped steps={','.join(held)} reason=billable_needs_--yes", file=sys.stderr)
    try:
        cfg = config_module.from_args(args)
        if args.dry_run is False and any(s in BILLABLE for s in steps) and not args.yes:
            raise StepError(f"steps {[s for s in steps if s in BILLABLE]} create billable resources: pass --yes (or --dry-run)")
        ctx = context(
            cfg,
            run_id=args.run_id,
            new_run="all" in args.steps or steps[0] == "data",
            dry_run=args.dry_run,
            yes=args.yes,
            data=args.data,
            pretrained_dir=args.pretrained_dir,
            sample=args.sample,
            all_runs=args.all_runs,
        )
        run(steps, ctx)
    except (ConfigError, StepError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
