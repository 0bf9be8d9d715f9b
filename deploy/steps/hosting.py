"""The real-time endpoint (autoscaled when ``autoscaling.max_instances`` > ``min_instances``) and its query,
and the model that batch transform and Clarify reuse."""

from __future__ import annotations

import time
from typing import Any

from deploy import autoscaling, gpu_hosts, results, rollout, sdk
from deploy.context import Context, StepError
from deploy.tags import tag_list

ENDPOINT_POLL_SECONDS = 30.0
ENDPOINT_WAIT_SECONDS = 3600


def confirm(ctx: Context, what: str) -> None:
    if not ctx.yes and not ctx.dry_run:
        raise StepError(f"{what} is billable while it runs: pass --yes to create it (it is deleted at the end unless --keep-endpoint)")


def wait_in_service(ctx: Context, endpoint: str) -> None:
    """Looks at once, then every ``ENDPOINT_POLL_SECONDS`` for up to an hour, saying each time how long it has
    waited (endpoints take 5-10 minutes: the user sees the wait move, as botocore's silent waiter did not)."""
    if ctx.dry_run:
        return
    sm = ctx.aws.client("sagemaker")
    started = time.monotonic()
    while True:
        described = sm.describe_endpoint(EndpointName=endpoint)
        status, elapsed = described["EndpointStatus"], time.monotonic() - started
        waited = round(elapsed)
        if status == "InService":
            return
        if status in ("Failed", "OutOfService", "Deleting") or elapsed > ENDPOINT_WAIT_SECONDS:
            reason = described.get("FailureReason") or f"still {status} after {waited} s"
            raise StepError(f"endpoint {endpoint} did not come into service: {reason}")
        ctx.say(f"event=endpoint_waiting endpoint={endpoint} status={status} waited_s={waited}")
        time.sleep(ENDPOINT_POLL_SECONDS)


def step_deploy(ctx: Context) -> None:
    confirm(ctx, "a real-time endpoint")
    model_data = ctx.need("final_model_data", "train")
    name, endpoint = ctx.new_name("model"), ctx.new_name("endpoint")
    model = sdk.model(ctx.cfg, ctx.sagemaker, image_uri=ctx.image_uri(), model_data=model_data, name=name)
    for kind, resource in (
        ("model", name),
        ("endpoint-config", endpoint),
        ("endpoint", endpoint),
    ):  # the SDK names the config after the endpoint
        ctx.record(kind, resource)
    ctx.state.model_name, ctx.state.endpoint = name, endpoint
    ctx.save()
    instance_type = ctx.cfg.endpoint_instance_type
    model.deploy(
        initial_instance_count=1,
        instance_type=instance_type,
        endpoint_name=endpoint,
        tags=tag_list(ctx.state.run_id, ctx.cfg.tags),
        kms_key=ctx.cfg.endpoint_key(instance_type),
        inference_ami_version=gpu_hosts.inference_ami(instance_type, ctx.cfg.inference_ami_version),  # GPU: driver 580
        data_capture_config=sdk.data_capture(rollout.capture_config(ctx.cfg.capture, ctx.cfg.s3_root, endpoint, ctx.cfg.kms_key_id)),
        wait=False,
    )
    wait_in_service(ctx, endpoint)
    ctx.say(f"event=endpoint_in_service endpoint={endpoint} instance_type={instance_type}")
    autoscaling.scale_real_time(ctx, endpoint)


def sample_bytes(ctx: Context) -> tuple[bytes, str]:
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


def print_top(ctx: Context, answer: dict[str, Any]) -> None:
    """The first prediction's top-k, one ``probability  label`` line each."""
    for entry in answer["predictions"][0]["top_k"]:
        ctx.say(f"  {entry['probability']:.3f}  {entry['label']}")


def step_query(ctx: Context) -> None:
    endpoint = ctx.need("endpoint", "deploy")
    if ctx.dry_run:
        return
    query_sample(ctx, endpoint, "query")


def query_sample(ctx: Context, endpoint: str, result: str, kind: str | None = None) -> None:
    """Send one test image to a real-time or serverless ``endpoint``, keep the answer as ``results[result]``, print its top-5."""
    body, sample = sample_bytes(ctx)
    answer = sdk.predictor(endpoint, ctx.sagemaker).predict(sdk.image_payload(body), initial_args={"CustomAttributes": "top_k=5"})
    ctx.state.results[result] = {"sample": sample, "answer": answer}
    ctx.save()
    kind_field = f" kind={kind}" if kind else ""
    ctx.say(f"event=prediction endpoint={endpoint}{kind_field} sample={sample} label={answer['predictions'][0]['label']}")
    print_top(ctx, answer)


def ensure_model(ctx: Context, instance_type: str) -> str:
    """The run's SageMaker model (the endpoint's, or a new one), for batch transform and Clarify."""
    if ctx.state.model_name:
        return ctx.state.model_name
    name = ctx.new_name("model")
    model = sdk.model(ctx.cfg, ctx.sagemaker, image_uri=ctx.image_uri(), model_data=ctx.need("final_model_data", "train"), name=name)
    ctx.record("model", name)
    model.create(instance_type=instance_type, tags=tag_list(ctx.state.run_id, ctx.cfg.tags))
    ctx.state.model_name = name
    ctx.save()
    return name
