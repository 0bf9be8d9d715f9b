"""Every SageMaker Python SDK v2 object the pipeline uses, built here and nowhere else.

Why v2: SDK 3.x drops MultiDataModel and Predictor, and its ModelTrainer takes no
Debugger/Profiler settings. Keeping the SDK behind this one module keeps a move to v3 local.

The SDK reads organisation defaults (tags, KMS keys, VPC, ...) from its own config files
(``/etc/xdg/sagemaker/config.yaml``, ``~/.config/sagemaker/config.yaml`` or the paths in
``SAGEMAKER_ADMIN_CONFIG_OVERRIDE`` / ``SAGEMAKER_USER_CONFIG_OVERRIDE``). ``session()`` loads
them as the SDK does and only adds the telemetry opt-out (without it every call tries the
network first), so those defaults still apply wherever the configuration leaves a value unset.
"""

from __future__ import annotations

import base64
import functools
import os
from typing import Any

import boto3

from deploy import gpu_hosts
from deploy.config import DeployConfig
from deploy.tags import tag_list
from image_classifier.metrics import OBJECTIVE_METRIC, metric_definitions

IMAGE_CONTENT_TYPE = "image/jpeg"  # what Clarify sends each perturbed image as
DEBUGGER_RULES = ("vanishing_gradient", "overfit", "overtraining", "poor_weight_initialization", "loss_not_decreasing")
CLARIFY_PROBABILITIES = "predictions[0].probabilities"  # JMESPath into our JSON answer (README: Serving)
CLARIFY_ATTRIBUTES = "probabilities=true"  # custom attributes that make our server add that vector
os.environ.setdefault("SAGEMAKER_SUPPRESS_V2_WARNING", "1")  # before any `import sagemaker` below


def session(boto_session: boto3.Session) -> Any:
    """An SDK session on ``boto_session`` with the user's SDK defaults plus the telemetry opt-out."""
    import sagemaker
    from sagemaker.config import load_sagemaker_config

    defaults = load_sagemaker_config()
    defaults.setdefault("SchemaVersion", "1.0")
    modules = defaults.setdefault("SageMaker", {}).setdefault("PythonSDK", {}).setdefault("Modules", {})
    modules.setdefault("TelemetryOptOut", True)
    events = boto_session._session.get_component("event_emitter")
    events.register("provide-client-params.sagemaker.CreateHyperParameterTuningJob", _grid_without_job_limit)
    return sagemaker.Session(boto_session=boto_session, sagemaker_config=defaults)


def _grid_without_job_limit(params: dict[str, Any], **_: Any) -> None:
    """SDK v2 sends ``MaxNumberOfTrainingJobs: None`` for Grid search (its way of leaving the limit
    out, which botocore refuses as a type error): leave it out. Grid runs every combination."""
    limits = params.get("HyperParameterTuningJobConfig", {}).get("ResourceLimits", {})
    if limits.get("MaxNumberOfTrainingJobs", 0) is None:
        del limits["MaxNumberOfTrainingJobs"]


def training_input(uri: str, *, sharded: bool = False) -> Any:
    """A channel every host reads whole; shards lazily through FastFile (few large objects read in sequence, what
    it is made for), folders copied first in File mode (FastFile's per-file first byte would starve the loader)."""
    from sagemaker.inputs import TrainingInput

    return TrainingInput(uri, distribution="FullyReplicated", input_mode="FastFile" if sharded else None)


def checkpoint_uri(cfg: DeployConfig, run_id: str, kind: str) -> str:
    """One prefix per run and kind; each job (each trial) writes a folder named after itself in it (``deploy.checkpoints``)."""
    return f"{cfg.checkpoint_uri}/{run_id}/{kind}"


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
    services: frozenset[str] = frozenset(),
) -> Any:
    """The training job definition shared by tuning (no services) and the final job.

    ``services``: which of ``debugger`` and ``profiler`` the job asks for (``deploy.services``).
    """
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
    if "debugger" in services:
        # the rules add the collections they read (gradients, losses, relu_input, weights ...);
        # naming them here as well would send each twice with different intervals
        debug["debugger_hook_config"] = DebuggerHookConfig(s3_output_path=f"{output_path}/debug")
        debug["rules"] = [Rule.sagemaker(getattr(rule_configs, name)()) for name in DEBUGGER_RULES]
    if "profiler" in services:
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
        checkpoint_s3_uri=checkpoint_uri(cfg, run_id, kind),
        output_path=output_path,
        output_kms_key=cfg.kms_key_id,
        volume_kms_key=cfg.volume_key(cfg.train_instance_type),
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
        "lr_scale": CategoricalParameter([str(v) for v in space.lr_scale_values])
        if space.lr_scale_values
        else ContinuousParameter(*space.lr_scale, scaling_type="Logarithmic"),
        "weight_decay": (
            CategoricalParameter([str(v) for v in space.weight_decay_values])
            if space.weight_decay_values
            else ContinuousParameter(*space.weight_decay, scaling_type="Logarithmic")
        ),
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
        max_jobs=cfg.job_limit,
        max_parallel_jobs=cfg.max_parallel_jobs,
        early_stopping_type=cfg.early_stopping_type,
        tags=tag_list(run_id, cfg.tags),
    )


def model(
    cfg: DeployConfig,
    sm_session: Any,
    *,
    image_uri: str,
    model_data: str,
    name: str,
    env: dict[str, str] | None = None,
    serverless: bool = False,
) -> Any:
    """``env``: the container's environment (the async and serverless limits).

    ``serverless``: the one model created without network isolation, whatever ``network_isolation``
    says (SageMaker refuses an isolated model on a serverless endpoint); every other model and job
    of the run keeps the configured value.
    """
    from sagemaker.model import Model

    return Model(
        image_uri=image_uri,
        model_data=model_data,
        role=cfg.role_arn,
        name=name,
        env=env,
        enable_network_isolation=False if serverless else cfg.network_isolation,
        vpc_config=_vpc_config(cfg),
        sagemaker_session=sm_session,
        predictor_cls=predictor,
    )


def async_config(cfg: DeployConfig, output_path: str) -> Any:
    """Answers to ``<output>/`` and failures to ``<output>-failures/``, encrypted with the run's key; SNS topics if set."""
    from sagemaker.async_inference import AsyncInferenceConfig

    options = cfg.async_inference
    topics = {k: v for k, v in (("SuccessTopic", options.success_topic), ("ErrorTopic", options.error_topic)) if v}
    return AsyncInferenceConfig(
        output_path=output_path,
        failure_path=output_path.rstrip("/") + "-failures",
        max_concurrent_invocations_per_instance=options.max_concurrent_invocations,
        kms_key_id=cfg.kms_key_id,
        notification_config=topics or None,
    )


def serverless_config(cfg: DeployConfig) -> Any:
    from sagemaker.serverless import ServerlessInferenceConfig

    return ServerlessInferenceConfig(memory_size_in_mb=cfg.serverless.memory_mb, max_concurrency=cfg.serverless.max_concurrency)


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
    """One request per image file, one JSON line per answer (``.out`` next to each input key).

    On a GPU type the job needs a host image (``deploy.gpu_hosts.transform_settings``), which the
    SDK's Transformer cannot set: a hook on this session's CreateTransformJob requests adds it to
    ``TransformResources``; the request guard then checks the request as sent.
    """
    from sagemaker.transformer import Transformer

    ami, env = gpu_hosts.transform_settings(cfg.transform_instance_type, cfg.image_cuda_compat)
    if ami is not None:  # on the client itself: a client copies the session's handlers when it is made
        events = sm_session.sagemaker_client.meta.events
        events.register(
            "provide-client-params.sagemaker.CreateTransformJob", functools.partial(_transform_ami, ami), unique_id="ic-transform-ami"
        )
    return Transformer(
        model_name=model_name,
        instance_count=1,
        instance_type=cfg.transform_instance_type,
        strategy="SingleRecord",
        assemble_with="Line",
        accept="application/jsonlines",
        output_path=output_path,
        output_kms_key=cfg.kms_key_id,
        volume_kms_key=cfg.volume_key(cfg.transform_instance_type),
        max_payload=6,
        env=env or None,
        tags=tag_list(run_id, cfg.tags),
        sagemaker_session=sm_session,
    )


def _transform_ami(ami: str, params: dict[str, Any], **_: Any) -> None:
    params.setdefault("TransformResources", {}).setdefault("TransformAmiVersion", ami)


def clarify_job(
    cfg: DeployConfig, sm_session: Any, *, model_name: str, images_uri: str, output_uri: str, run_id: str, labels: list[str] | None
) -> dict[str, Any]:
    """Image SHAP explanations; ``labels``: the model card's classes, in the order of the probabilities.

    The job is never network-isolated, whatever ``network_isolation`` says: Clarify creates a
    shadow endpoint of the model and calls it through the SageMaker API. The model itself (and
    so the shadow endpoint's container) keeps its isolation.
    """
    from sagemaker import clarify
    from sagemaker.network import NetworkConfig

    network = NetworkConfig(
        enable_network_isolation=False,
        security_group_ids=cfg.security_group_ids or None,
        subnets=cfg.subnets or None,
        encrypt_inter_container_traffic=True,
    )
    processor = clarify.SageMakerClarifyProcessor(
        role=cfg.role_arn,
        instance_count=1,
        instance_type=cfg.clarify_instance_type,
        volume_kms_key=cfg.volume_key(cfg.clarify_instance_type),
        output_kms_key=cfg.kms_key_id,
        max_runtime_in_seconds=cfg.clarify_max_runtime_s,
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
            custom_attributes=CLARIFY_ATTRIBUTES,
        ),
        "explainability_config": clarify.SHAPConfig(
            num_samples=500,
            image_config=clarify.ImageConfig(model_type="IMAGE_CLASSIFICATION", num_segments=20, segment_compactness=5),
        ),
        "model_scores": clarify.ModelPredictedLabelConfig(probability=CLARIFY_PROBABILITIES, label_headers=labels),
    }


def _vpc_config(cfg: DeployConfig) -> dict[str, list[str]] | None:
    if not cfg.subnets:
        return None
    return {"Subnets": cfg.subnets, "SecurityGroupIds": cfg.security_group_ids}


def data_capture(capture: dict[str, Any] | None) -> Any:
    """The SDK's DataCaptureConfig for a ``deploy.rollout.capture_config`` request member (None when capture is off)."""
    if capture is None:
        return None
    from sagemaker.model_monitor import DataCaptureConfig

    return DataCaptureConfig(
        enable_capture=capture["EnableCapture"],
        sampling_percentage=capture["InitialSamplingPercentage"],
        destination_s3_uri=capture["DestinationS3Uri"],
        kms_key_id=capture.get("KmsKeyId"),
        capture_options=["REQUEST", "RESPONSE"],
        json_content_types=capture.get("CaptureContentTypeHeader", {}).get("JsonContentTypes"),
    )
