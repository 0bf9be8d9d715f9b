"""Register the run's final model in the registry group, list the group's versions, approve or reject one."""

from __future__ import annotations

import json
from typing import Any

from deploy import ecr, ownership, registry, results
from deploy.context import Context, StepError
from deploy.tags import tag_list


def _encryption(ctx: Context) -> dict[str, str]:
    return {"ServerSideEncryption": "aws:kms", "SSEKMSKeyId": ctx.cfg.kms_key_id} if ctx.cfg.kms_key_id else {}


def _put_json(ctx: Context, uri: str, document: dict[str, Any]) -> None:
    bucket, key = results.split_s3(uri)
    body = json.dumps(document, indent=2, default=str).encode()
    ctx.aws.client("s3").put_object(Bucket=bucket, Key=key, Body=body, ContentType="application/json", **_encryption(ctx))


def step_register(ctx: Context) -> None:
    """One version per final job: registering the same run again says which version it already is."""
    model_data = ctx.need("final_model_data", "train")
    final_job = ctx.need("final_job", "train")
    sm, group = ctx.aws.client("sagemaker"), ctx.cfg.model_registry.group
    card: dict[str, Any] = {}
    if not ctx.dry_run:
        done = [v for v in registry.versions(sm, group) if v.metadata.get("training_job") == final_job]
        if done:
            ctx.state.registered_version = done[0].number
            ctx.save()
            ctx.say(f"event=already_registered group={group} version={done[0].number} training_job={final_job}")
            return
        try:
            card = results.model_card(ctx.aws.client("s3"), model_data)
        except ValueError as exc:  # a script-mode model may carry no card: registered without its figures
            ctx.say(f"event=no_model_card model_data={model_data} detail={str(exc)!r}")
    prefix = f"{ctx.cfg.s3_root}/runs/{ctx.state.run_id}/registry"
    card_uri, metrics_uri = f"{prefix}/model_card.json", f"{prefix}/model_metrics.json"
    if card or ctx.dry_run:
        _put_json(ctx, card_uri, card)
    _put_json(ctx, metrics_uri, registry.metrics_document(card))
    registry.ensure_group(sm, group, tag_list(None, ctx.cfg.tags), dry_run=ctx.dry_run)
    metadata = registry.headline(
        card,
        run_id=ctx.state.run_id,
        final_job=final_job,
        tuning_job=ctx.state.tuning_job,
        card_uri=card_uri if card or ctx.dry_run else None,
    )
    image = ctx.image_uri()
    request = registry.package_request(
        group=group,
        image=image,
        model_data=model_data,
        metrics_uri=metrics_uri,
        metadata=metadata,
        approval=ctx.cfg.model_registry.approval,
        instance_types=(ctx.cfg.endpoint_instance_type, ctx.cfg.transform_instance_type),
        tags=tag_list(ctx.state.run_id, ctx.cfg.tags),
    )
    arn = sm.create_model_package(**request)["ModelPackageArn"]
    version = int(arn.rsplit("/", 1)[-1]) if arn.rsplit("/", 1)[-1].isdigit() else 0  # a dry run's placeholder: 0
    try:  # the image stays in ECR as long as the version may serve (deploy.ecr.protect)
        ecr.protect(ctx.aws, ctx.cfg, image, f"{ecr.PROTECTED_PREFIX}{group}-v{version}", ctx.say)
    except ecr.ImageError as exc:
        raise StepError(str(exc)) from None
    ctx.state.registered_version = version
    ctx.save()
    figures = " ".join(f"{k}={metadata[k]}" for k in ("test_acc", "ece_after") if k in metadata)
    ctx.say(
        f"event=registered group={group} version={version} status={ctx.cfg.model_registry.approval} {figures} arn={arn}".replace("  ", " ")
    )


def live_endpoints(ctx: Context) -> dict[str, list[str]]:
    """Model package ARN -> the owned endpoints serving it (their current configuration's models)."""
    sm = ctx.aws.client("sagemaker")
    serving: dict[str, list[str]] = {}
    for page in sm.get_paginator("list_endpoints").paginate():
        for item in page.get("Endpoints", []):
            tags = {t["Key"]: t["Value"] for t in sm.list_tags(ResourceArn=item["EndpointArn"]).get("Tags", [])}
            if not ownership.owned(tags):
                continue
            config = sm.describe_endpoint(EndpointName=item["EndpointName"]).get("EndpointConfigName")
            variants = sm.describe_endpoint_config(EndpointConfigName=config).get("ProductionVariants", []) if config else []
            for variant in variants:
                package = registry.version_of_model(sm, variant.get("ModelName", ""))
                if package:
                    serving.setdefault(package, []).append(item["EndpointName"])
    return serving


def step_models(ctx: Context) -> None:
    """The group's versions, oldest first: status, headline figures, run, and the endpoints serving each."""
    if ctx.dry_run:
        return
    group = ctx.cfg.model_registry.group
    found = registry.versions(ctx.aws.client("sagemaker"), group)
    serving = live_endpoints(ctx)
    for version in found:
        version.live = serving.get(version.arn, [])
        ctx.say(version.line())
    ctx.say(f"event=models group={group} versions={len(found)} approved={sum(v.status == 'Approved' for v in found)}")


def _set(ctx: Context, status: str) -> None:
    if ctx.version is None:
        raise StepError(
            f"{'approve' if status == 'Approved' else 'reject'} needs --version N (python -m deploy.pipeline models lists them)"
        )
    sm, group = ctx.aws.client("sagemaker"), ctx.cfg.model_registry.group
    if ctx.dry_run:
        arn = f"arn:aws:sagemaker:{ctx.cfg.region}:000000000000:model-package/{group}/{ctx.version}"
        version = registry.Version(ctx.version, arn, "PendingManualApproval", "", "")
    else:
        found = registry.find(registry.versions(sm, group), ctx.version)
        if found is None:
            raise StepError(f"group {group} has no version {ctx.version}: python -m deploy.pipeline models lists them")
        version = found
    reason = ctx.reason or f"{status} with python -m deploy.pipeline"
    registry.set_status(sm, version, status, reason)
    ctx.say(f"event=model_status group={group} version={version.number} status={status} was={version.status}")


def step_approve(ctx: Context) -> None:
    _set(ctx, "Approved")


def step_reject(ctx: Context) -> None:
    _set(ctx, "Rejected")
