"""A multi-model endpoint serving the final model and the best tuning trial's model.

multi-model-server multi-model endpoints run on CPU instance types only (``multi_model_instance_type``;
GPU multi-model endpoints need Triton): the configuration check refuses an accelerated type.
"""

from __future__ import annotations

from deploy import sdk
from deploy.context import Context
from deploy.steps.hosting import confirm, sample_bytes, wait_in_service
from deploy.tags import tag_list


def step_mme(ctx: Context) -> None:
    confirm(ctx, "a multi-model endpoint")
    artifacts = {"final.tar.gz": ctx.need("final_model_data", "train"), "best-trial.tar.gz": ctx.need("best_model_data", "best")}
    name = ctx.new_name("mme")
    mme = sdk.multi_model(
        ctx.cfg, ctx.sagemaker, image_uri=ctx.image_uri(), name=name, prefix=f"{ctx.cfg.s3_root}/runs/{ctx.state.run_id}/mme/"
    )
    for kind in ("model", "endpoint-config", "endpoint"):  # one name for all three
        ctx.record(kind, name)
    ctx.state.multi_model_endpoint = name
    ctx.save()
    instance_type = ctx.cfg.multi_model_instance_type
    mme.deploy(
        initial_instance_count=1,
        instance_type=instance_type,
        endpoint_name=name,
        tags=tag_list(ctx.state.run_id, ctx.cfg.tags),
        kms_key=ctx.cfg.endpoint_key(instance_type),
        wait=False,
    )
    wait_in_service(ctx, name)
    if ctx.dry_run:
        return
    body, sample = sample_bytes(ctx)
    predictor = sdk.predictor(name, ctx.sagemaker)
    answers = {}
    for target, source in artifacts.items():
        mme.add_model(model_data_source=source, model_data_path=target)
        answer = predictor.predict(sdk.image_payload(body), target_model=target)
        answers[target] = answer
        ctx.say(f"event=prediction endpoint={name} target_model={target} sample={sample} label={answer['predictions'][0]['label']}")
    ctx.state.results["mme"] = answers
    ctx.save()
