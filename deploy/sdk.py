"""Every SageMaker Python SDK v2 object the pipeline uses, built here and nowhere else.

Why v2: SDK 3.x drops MultiDataModel and Predictor, and its ModelTrainer takes no
Debugger/Profiler settings. Keeping the SDK behind this one module keeps a move to v3 local.
"""

from __future__ import annotations

import base64
from typing import Any

import boto3

from deploy.aws import tag_list
from deploy.config import DeployConfig
from image_classifier.metrics import OBJECTIVE_METRIC, metric_definitions

IMAGE_CONTENT_TYPE = "image/jpeg"  # what Clarify sends each perturbed image as
DEBUGGER_RULES = ("vanishing_gradient", "overfit", "overtraining", "poor_weight_initialization", "loss_not_decreasing")
CLARIFY_PROBABILITIES = "predictions[0].probabilities"  # JMESPath into our JSON answer (README: Serving)


def session(boto_session: boto3.Session) -> Any:
    import sagemaker

    return sagemaker.Session(boto_session=boto_session)


def _vpc(cfg: DeployConfig) -> dict[str, Any]:
    return {"subnets": cfg.subnets or None, "security_group_ids": cfg.security_group_ids or None}


def estimator(
    cfg: DeployConfig,
    sm_session: Any,
    *,
    image_uri: str,
    run_id: str,
    kind: str,
    hyperparameters: dict[str, str],
    profiled: bool,
) -> Any:
    """The training job definition shared by tuning (``profiled=False``) and the final job."""
    from sagemaker.debugger import (
        DebuggerHookConfig,
        ProfilerConfig,
        ProfilerRule,
        Rule,
        rule_configs,
    )
    from sagemaker.estimator import Estimator

    output_path = f"{cfg.s3_root}/runs/{run_id}/{kind}"
    debug: dict[str, Any] = {"debugger_hook_config": False, "disable_profiler": True}
    if profiled and cfg.debugger:
        # the rules add the collections they read (gradients, losses, relu_input, weights ...);
        # naming them here as well would send each twice with different intervals
        debug["debugger_hook_config"] = DebuggerHookConfig(s3_output_path=f"{output_path}/debug")
        debug["rules"] = [Rule.sagemaker(getattr(rule_configs, name)()) for name in DEBUGGER_RULES]
    if profiled and cfg.profiler:
        debug["disable_profiler"] = False
        # system metrics only: Debugger's framework profiling does not support PyTorch 2.x
        debug["profiler_config"] = ProfilerConfig(s3_output_path=f"{output_path}/profiler", system_monitor_interval_millis=500)
        debug.setdefault("rules", []).append(ProfilerRule.sagemaker(rule_configs.ProfilerReport()))
    return Estimator(
        image_uri=image_uri,
        role=cfg.role_arn,
        instance_count=cfg.train_instance_count,
        instance_type=cfg.train_instance_type,
        volume_size=cfg.train_volume_gb,
        max_run=cfg.max_run_s,
        use_spot_instances=cfg.use_spot,
        max_wait=cfg.max_wait,
        checkpoint_s3_uri=f"{cfg.checkpoint_uri}/{run_id}/{kind}",
        output_path=output_path,
        output_kms_key=cfg.kms_key_id,
        volume_kms_key=cfg.kms_key_id,
        enable_network_isolation=cfg.network_isolation,
        hyperparameters=hyperparameters,
        metric_definitions=metric_definitions(),
        base_job_name=f"ic-{kind}",
        tags=tag_list(run_id, cfg.tags),
        sagemaker_session=sm_session,
        **_vpc(cfg),
        **debug,
    )


def tuner(cfg: DeployConfig, base_estimator: Any, *, run_id: str) -> Any:
    """Validation accuracy, maximised, over the configured search space."""
    from sagemaker.tuner import CategoricalParameter, ContinuousParameter, HyperparameterTuner

    space = cfg.search
    ranges: dict[str, Any] = {
        "lr": ContinuousParameter(*space.lr, scaling_type="Logarithmic"),
        "weight_decay": ContinuousParameter(*space.weight_decay, scaling_type="Logarithmic"),
        "batch_size": CategoricalParameter([str(b) for b in space.batch_size]),
        "freeze": CategoricalParameter(space.freeze),
    }
    if space.models:
        ranges["model"] = CategoricalParameter(space.models)
    return HyperparameterTuner(
        base_estimator,
        objective_metric_name=OBJECTIVE_METRIC,
        objective_type="Maximize",
        hyperparameter_ranges=ranges,
        metric_definitions=metric_definitions(),
        strategy=cfg.strategy,
        max_jobs=cfg.max_jobs,
        max_parallel_jobs=cfg.max_parallel_jobs,
        early_stopping_type=cfg.early_stopping,
        tags=tag_list(run_id, cfg.tags),
    )


def model(cfg: DeployConfig, sm_session: Any, *, image_uri: str, model_data: str, name: str) -> Any:
    from sagemaker.model import Model

    return Model(
        image_uri=image_uri,
        model_data=model_data,
        role=cfg.role_arn,
        name=name,
        enable_network_isolation=cfg.network_isolation,
        vpc_config=_vpc_config(cfg),
        sagemaker_session=sm_session,
        predictor_cls=predictor,
    )


def multi_model(cfg: DeployConfig, sm_session: Any, *, image_uri: str, name: str, prefix: str) -> Any:
    from sagemaker.multidatamodel import MultiDataModel

    return MultiDataModel(
        name=name,
        model_data_prefix=prefix,
        image_uri=image_uri,
        role=cfg.role_arn,
        env={"SAGEMAKER_MULTI_MODEL": "true"},
        enable_network_isolation=cfg.network_isolation,
        vpc_config=_vpc_config(cfg),
        sagemaker_session=sm_session,
    )


def predictor(endpoint_name: str, sm_session: Any) -> Any:
    """JSON in, JSON out: ``{"instances": [{"b64": ...}]}``, the batch form of our /invocations.

    Raw ``image/jpeg`` works as well (see the README's curl example); JSON is used here because
    it carries several images per request, and because the local AWS emulator the tests run
    against cannot hold a binary request body.
    """
    from sagemaker.deserializers import JSONDeserializer
    from sagemaker.predictor import Predictor
    from sagemaker.serializers import JSONSerializer

    return Predictor(endpoint_name, sm_session, JSONSerializer(), JSONDeserializer())


def image_payload(*images: bytes) -> dict[str, Any]:
    return {"instances": [{"b64": base64.b64encode(image).decode()} for image in images]}


def transformer(cfg: DeployConfig, sm_session: Any, *, model_name: str, output_path: str, run_id: str) -> Any:
    """One request per image file, one JSON line per answer (``.out`` next to each input key)."""
    from sagemaker.transformer import Transformer

    return Transformer(
        model_name=model_name,
        instance_count=1,
        instance_type=cfg.transform_instance_type,
        strategy="SingleRecord",
        assemble_with="Line",
        accept="application/jsonlines",
        output_path=output_path,
        output_kms_key=cfg.kms_key_id,
        volume_kms_key=cfg.kms_key_id,
        max_payload=6,
        tags=tag_list(run_id, cfg.tags),
        sagemaker_session=sm_session,
    )


def clarify_job(cfg: DeployConfig, sm_session: Any, *, model_name: str, images_uri: str, output_uri: str, run_id: str) -> dict[str, Any]:
    """Image SHAP explanations (Clarify spins up its own shadow endpoint of the model)."""
    from sagemaker import clarify
    from sagemaker.network import NetworkConfig

    network = NetworkConfig(
        enable_network_isolation=cfg.network_isolation,
        security_group_ids=cfg.security_group_ids or None,
        subnets=cfg.subnets or None,
        encrypt_inter_container_traffic=True,
    )
    processor = clarify.SageMakerClarifyProcessor(
        role=cfg.role_arn,
        instance_count=1,
        instance_type=cfg.clarify_instance_type,
        sagemaker_session=sm_session,
        network_config=network,
        tags=tag_list(run_id, cfg.tags),
    )
    return {
        "processor": processor,
        "data_config": clarify.DataConfig(s3_data_input_path=images_uri, s3_output_path=output_uri, dataset_type="application/x-image"),
        "model_config": clarify.ModelConfig(
            model_name=model_name,
            instance_type=cfg.endpoint_instance_type,
            instance_count=1,
            content_type=IMAGE_CONTENT_TYPE,
            accept_type="application/json",
            custom_attributes="probabilities=true",
        ),
        "explainability_config": clarify.SHAPConfig(
            num_samples=500,
            image_config=clarify.ImageConfig(model_type="IMAGE_CLASSIFICATION", num_segments=20, segment_compactness=5),
        ),
        "model_scores": clarify.ModelPredictedLabelConfig(probability=CLARIFY_PROBABILITIES),
    }


def _vpc_config(cfg: DeployConfig) -> dict[str, list[str]] | None:
    if not cfg.subnets:
        return None
    return {"Subnets": cfg.subnets, "SecurityGroupIds": cfg.security_group_ids}
