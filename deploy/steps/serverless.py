"""A serverless endpoint: no instance to run, billed per request, scaled by SageMaker, CPU only.

The configuration check refuses what serverless cannot do before anything is sent
(``deploy.refusals``): GPU, memory other than 1-6 GB, VPC, multi-model, payloads over 4 MB,
requests over 60 s. Its model is the run's only one created without network isolation (serverless
endpoints refuse it); the run's other jobs and models keep ``network_isolation``. The step refuses
an image over 10 GB (its size in ECR). The image to use there is the CPU-only build
(``serverless.image_uri``; docs/aws.md#serverless): the CUDA build runs, but is 7 GB to pull on
every cold start.
"""

from __future__ import annotations

from typing import Any

from botocore.exceptions import ClientError

from deploy import hosting_options, sdk
from deploy.context import Context, StepError
from deploy.steps.hosting import confirm, query_sample, wait_in_service
from deploy.tags import tag_list


def step_serverless(ctx: Context) -> None:
    confirm(ctx, "a serverless endpoint")
    options = ctx.cfg.serverless
    image = options.image_uri or ctx.image_uri()
    if problem := hosting_options.serverless_image_problem(image, image_size(ctx, image)):
        raise StepError(problem)
    name = ctx.new_name("serverless")
    model = sdk.model(
        ctx.cfg,
        ctx.sagemaker,
        image_uri=image,
        model_data=ctx.need("final_model_data", "train"),
        name=name,
        env=hosting_options.serverless_environment(options),
        serverless=True,
    )
    ctx.say(f"event=network_isolation model={name} isolated=false reason=serverless_endpoints_refuse_it others={ctx.cfg.network_isolation}")
    for kind in ("model", "endpoint-config", "endpoint"):
        ctx.record(kind, name)
    ctx.state.serverless_endpoint = name
    ctx.save()
    model.deploy(
        endpoint_name=name,
        serverless_inference_config=sdk.serverless_config(ctx.cfg),
        tags=tag_list(ctx.state.run_id, ctx.cfg.tags),  # no KMS key: a serverless endpoint has no volume of ours
        wait=False,
    )
    wait_in_service(ctx, name)
    ctx.say(
        f"event=endpoint_in_service endpoint={name} kind=serverless memory_mb={options.memory_mb} max_concurrency={options.max_concurrency}"
    )
    if ctx.dry_run:
        return
    query_sample(ctx, name, "serverless", kind="serverless")


def image_size(ctx: Context, image_uri: str) -> int | None:
    """The image's size in ECR (compressed: a lower bound of what SageMaker counts); None where ECR cannot tell."""
    registry, _, rest = image_uri.partition("/")
    repository, at, digest = rest.partition("@")
    if ".dkr.ecr." not in registry or not at or ctx.dry_run:
        return None
    try:
        details: list[dict[str, Any]] = (
            ctx.aws.client("ecr").describe_images(repositoryName=repository, imageIds=[{"imageDigest": digest}]).get("imageDetails", [])
        )
    except ClientError:
        return None
    return details[0].get("imageSizeInBytes") if details else None
