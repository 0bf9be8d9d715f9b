"""An asynchronous endpoint: a request is an image in S3, its answer a JSON object written to S3.

For the larger images and longer requests real-time endpoints do not take (6 MB, 60 s): the model's
container is told its limits (``SAGEMAKER_MAX_PAYLOAD_IN_MB`` = ``async_inference.max_payload_mb``, at
most the ceiling it is measured to handle; ``SAGEMAKER_MODEL_SERVER_TIMEOUT``), answers go to
``<prefix>/runs/<run>/async/<endpoint>/output/`` and failures beside it, optional SNS topics are told
of each. The endpoint scales to zero when idle and back up on demand (``deploy.autoscaling``). The
query uploads a sample image, invokes the endpoint with its S3 location, waits for the answer object
(or the failure object) and prints the top-5.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from botocore.exceptions import ClientError

from deploy import autoscaling, gpu_hosts, hosting_options, results, sdk
from deploy.context import Context, StepError
from deploy.steps.hosting import confirm, print_top, sample_bytes, wait_in_service
from deploy.tags import tag_list

CONTENT_TYPE = "application/x-image"  # any format Pillow reads (docs/serving.md)


def step_async(ctx: Context) -> None:
    confirm(ctx, "an asynchronous endpoint")
    options = ctx.cfg.async_inference
    name = ctx.new_name("async")
    output = f"{ctx.cfg.s3_root}/runs/{ctx.state.run_id}/async/{name}/output"
    model = sdk.model(
        ctx.cfg,
        ctx.sagemaker,
        image_uri=ctx.image_uri(),
        model_data=ctx.need("final_model_data", "train"),
        name=name,
        env=hosting_options.async_environment(options),
    )
    for kind in ("model", "endpoint-config", "endpoint"):  # one name for all three
        ctx.record(kind, name)
    ctx.state.async_endpoint = name
    ctx.save()
    model.deploy(
        initial_instance_count=1,  # SageMaker starts with one; autoscaling may take it to zero once idle
        instance_type=options.instance_type,
        endpoint_name=name,
        tags=tag_list(ctx.state.run_id, ctx.cfg.tags),
        kms_key=ctx.cfg.endpoint_key(options.instance_type),
        inference_ami_version=gpu_hosts.inference_ami(options.instance_type, ctx.cfg.inference_ami_version),
        async_inference_config=sdk.async_config(ctx.cfg, output),
        wait=False,
    )
    wait_in_service(ctx, name)
    ctx.say(f"event=endpoint_in_service endpoint={name} kind=async instance_type={options.instance_type} output={output}/")
    autoscaling.scale_async(ctx, name)
    if not ctx.dry_run:
        query_async(ctx, name)


def query_async(ctx: Context, endpoint: str) -> dict[str, Any]:
    """Upload the sample, invoke with its S3 location, wait for the answer (or the failure) in S3."""
    options = ctx.cfg.async_inference
    body, sample = sample_bytes(ctx)
    key = f"{ctx.cfg.prefix}/runs/{ctx.state.run_id}/async-input/{uuid.uuid4().hex}-{sample.rsplit('/', 1)[-1]}"
    s3 = ctx.aws.client("s3")
    s3.put_object(Bucket=ctx.cfg.bucket, Key=key, Body=body, **results.encryption(ctx.cfg.kms_key_id))
    sent = ctx.aws.client("sagemaker-runtime").invoke_endpoint_async(
        EndpointName=endpoint,
        InputLocation=f"s3://{ctx.cfg.bucket}/{key}",
        ContentType=CONTENT_TYPE,
        CustomAttributes="top_k=5",
        InvocationTimeoutSeconds=options.timeout_s,
    )
    output, failure = sent["OutputLocation"], sent.get("FailureLocation")
    ctx.say(f"event=async_invoked endpoint={endpoint} inference_id={sent.get('InferenceId')} output={output}")
    answer = json.loads(_wait_for(ctx, output, failure))
    ctx.state.results["async"] = {"sample": sample, "input": f"s3://{ctx.cfg.bucket}/{key}", "output": output, "answer": answer}
    ctx.save()
    ctx.say(f"event=prediction endpoint={endpoint} kind=async sample={sample} label={answer['predictions'][0]['label']}")
    print_top(ctx, answer)
    return answer


def _read(s3: Any, uri: str) -> bytes | None:
    bucket, key = results.split_s3(uri)
    try:
        return s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404", "NoSuchBucket"):
            return None
        raise


def _wait_for(ctx: Context, output: str, failure: str | None) -> bytes:
    """The answer object's bytes once it exists; a StepError with the failure object's text, or after ``wait_s``."""
    options, s3 = ctx.cfg.async_inference, ctx.aws.client("s3")
    deadline = time.monotonic() + options.wait_s
    while True:
        if (answer := _read(s3, output)) is not None:
            return answer
        if failure and (reason := _read(s3, failure)) is not None:
            raise StepError(f"the asynchronous request failed: {reason.decode(errors='replace')[:500]} ({failure})")
        if time.monotonic() > deadline:
            raise StepError(
                f"no answer at {output} after {options.wait_s} s (async_inference.wait_s); the endpoint may still be scaling up"
            )
        time.sleep(options.poll_s)
