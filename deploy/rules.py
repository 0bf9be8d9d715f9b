"""What SageMaker refuses and neither botocore nor the emulator does, refused here first.

Two views of the same rules:

- ``config_refusals(cfg)``: the configuration check, run whenever a configuration is loaded, so
  a bad combination fails with the field's name before anything is built or sent;
  ``plan_refusals(cfg, steps)`` adds the rules that depend on the steps a run will take.
- ``RequestRules``: the same rules on each request as the SDK finally builds it (the SDK adds
  the organisation's defaults from its own config.yaml, which the configuration never sees),
  plus name reuse within a session. ``deploy.aws`` runs them, with the service model's
  constraints, on every request before it is sent; the tests run them on every recorded request.

docs/aws.md lists every rule with the message it prints.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from deploy import gpu_hosts, hosting_options, kms
from deploy.instances import has_local_nvme, is_accelerated
from deploy.rollout_rules import RolloutRules

if TYPE_CHECKING:
    from deploy.config import DeployConfig

CLARIFY_IMAGE = "sagemaker-clarify-processing"
NAME_KEYS = {
    "CreateTrainingJob": "TrainingJobName",
    "CreateHyperParameterTuningJob": "HyperParameterTuningJobName",
    "CreateTransformJob": "TransformJobName",
    "CreateProcessingJob": "ProcessingJobName",
    "CreateModel": "ModelName",
    "CreateEndpointConfig": "EndpointConfigName",
    "CreateEndpoint": "EndpointName",
}
HYPERBAND_AUTO = (
    'Hyperband stops unpromising trials itself; SageMaker refuses it with early stopping Auto: set early_stopping = "Off" or leave it unset'
)
GRID_CONTINUOUS = "Grid search takes categorical ranges only; {names} {verb} continuous: list the values to try in {fields}"
GRID_LIMIT = "Grid search runs every combination of the categorical values and takes no job limit: remove max_jobs"
MULTI_MODEL_GPU = (
    "{value!r} is accelerated; multi-model endpoints of a multi-model-server container run on CPU instance types only "
    "(GPU multi-model endpoints need Triton): choose e.g. ml.m5.xlarge or ml.c5.2xlarge"
)
VOLUME_KEY_ALIAS = (
    "{key!r} is an alias; the volume KMS key of training, tuning and processing jobs takes a key id or key ARN only "
    "({types} {verb} EBS volumes): set volume_kms_key_id to the key's ARN ({hint})"
)


@dataclass(frozen=True)
class Refusal:
    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"


class RequestRefused(ValueError):
    """A request AWS would refuse, stopped before it was sent."""

    def __init__(self, operation: str, problems: list[str]):
        self.operation, self.problems = operation, problems
        super().__init__(f"AWS would refuse {operation}; nothing was sent:\n" + "\n".join(f"  {p}" for p in problems))


def _plural(names: list[str]) -> str:
    return "are" if len(names) > 1 else "is"


def config_refusals(cfg: DeployConfig) -> list[Refusal]:
    """Every cross-field rule the configuration breaks (field-level checks live on the fields)."""
    out: list[Refusal] = []
    if bool(cfg.subnets) != bool(cfg.security_group_ids):
        out.append(Refusal("subnets", "subnets and security_group_ids go together: set both or neither"))
    if cfg.use_spot and cfg.max_wait_s is not None and cfg.max_wait_s < cfg.max_run_s:
        out.append(Refusal("max_wait_s", f"max_wait_s ({cfg.max_wait_s}) must be >= max_run_s ({cfg.max_run_s}) with Spot"))
    if cfg.strategy == "Hyperband" and cfg.early_stopping == "Auto":
        out.append(Refusal("early_stopping", HYPERBAND_AUTO))
    if cfg.strategy == "Grid":
        continuous = [name for name in ("lr_scale", "weight_decay") if not getattr(cfg.search, f"{name}_values")]
        if continuous:
            fields = " and ".join(f"search.{name}_values" for name in continuous)
            out.append(Refusal("search", GRID_CONTINUOUS.format(names=" and ".join(continuous), verb=_plural(continuous), fields=fields)))
        if cfg.max_jobs is not None:
            out.append(Refusal("max_jobs", GRID_LIMIT))
    elif cfg.job_limit is not None and cfg.max_parallel_jobs > cfg.job_limit:
        out.append(Refusal("max_parallel_jobs", f"max_parallel_jobs ({cfg.max_parallel_jobs}) exceeds max_jobs ({cfg.job_limit})"))
    volume_key = cfg.volume_kms_key_id or cfg.kms_key_id
    if volume_key and kms.is_alias(volume_key):
        with_ebs = [name for name in ("train_instance_type", "clarify_instance_type") if not has_local_nvme(getattr(cfg, name))]
        if with_ebs:
            types = ", ".join(f"{name}={getattr(cfg, name)}" for name in with_ebs)
            message = VOLUME_KEY_ALIAS.format(
                key=volume_key, types=types, verb="have" if len(with_ebs) > 1 else "has", hint=kms.describe_key_hint(volume_key)
            )
            out.append(Refusal("kms_key_id", message))
    if is_accelerated(cfg.multi_model_instance_type):
        out.append(Refusal("multi_model_instance_type", MULTI_MODEL_GPU.format(value=cfg.multi_model_instance_type)))
    return out + _gpu_refusals(cfg) + hosting_options.config_refusals(cfg)


def _gpu_refusals(cfg: DeployConfig) -> list[Refusal]:
    """The GPU hosts the image cannot run on (``deploy.gpu_hosts``; docs/image.md, "GPU drivers")."""
    out = []
    for name in ("train_instance_type", "endpoint_instance_type", "transform_instance_type"):
        if reason := gpu_hosts.never(getattr(cfg, name)):
            out.append(Refusal(name, reason))
    if reason := gpu_hosts.transform_problem(cfg.transform_instance_type, cfg.image_cuda_compat):
        out.append(Refusal("transform_instance_type", reason))
    if cfg.inference_ami_version and (reason := gpu_hosts.ami_problem(cfg.inference_ami_version, cfg.image_cuda_compat)):
        out.append(Refusal("inference_ami_version", reason))
    return out


def plan_refusals(cfg: DeployConfig, steps: list[str]) -> list[Refusal]:
    """Rules that hold only for the steps a run takes (the async and serverless ones: ``deploy.hosting_options``)."""
    out = hosting_options.plan_refusals(cfg, steps)
    if "clarify" in steps and gpu_hosts.is_nvidia(cfg.endpoint_instance_type):
        message = (
            f"{cfg.endpoint_instance_type!r} is a GPU: Clarify's shadow endpoint takes no InferenceAmiVersion, and SageMaker's "
            "default GPU host drivers cannot run the image's CUDA 13 build: run the clarify step with a CPU type "
            "(--endpoint-instance-type ml.m5.xlarge)"
        )
        out.append(Refusal("endpoint_instance_type", message))
    return out


def _volume(where: str, resources: dict[str, Any], *, alias_allowed: bool) -> list[str]:
    key, instance_type = resources.get("VolumeKmsKeyId"), resources.get("InstanceType", "")
    if not key:
        return []
    problems = []
    if has_local_nvme(instance_type):
        problems.append(
            f"{where}.VolumeKmsKeyId: {instance_type} has local NVMe storage (hardware-encrypted); SageMaker refuses a volume key"
        )
    if not alias_allowed and not kms.is_key_id_or_arn(key):
        problems.append(f"{where}.VolumeKmsKeyId: {key!r} is not a key id or key ARN (this field takes no alias)")
    return problems


def _channels(where: str, definition: dict[str, Any]) -> list[str]:
    """The trainer reads files (a folder or shards with a manifest) that every host holds whole."""
    default_mode = definition.get("AlgorithmSpecification", {}).get("TrainingInputMode", "File")
    problems = []
    for index, channel in enumerate(definition.get("InputDataConfig", [])):
        name = f"{where}InputDataConfig[{index}] ({channel.get('ChannelName')})"
        if channel.get("InputMode", default_mode) == "Pipe":
            problems.append(f"{name}.InputMode: Pipe streams records and the trainer reads files: use File, or FastFile for shards")
        s3 = channel.get("DataSource", {}).get("S3DataSource", {})
        if s3.get("S3DataDistributionType") == "ShardedByS3Key":
            problems.append(
                f"{name}.S3DataDistributionType: ShardedByS3Key gives each host different images, and the ranks of a "
                "distributed job must take the same number of steps: use FullyReplicated (the trainer splits the work itself)"
            )
    return problems


def _never(where: str, resources: dict[str, Any]) -> list[str]:
    reason = gpu_hosts.never(resources.get("InstanceType", ""))
    return [f"{where}.InstanceType: {reason}"] if reason else []


@dataclass
class RequestRules:
    """The rules on requests; remembers multi-model models and the names created this session."""

    multi_model: set[str] = field(default_factory=set)
    confined: dict[str, str] = field(default_factory=dict)  # model -> "network isolation" / "a VPC": neither serverless can take
    created: set[tuple[str, str]] = field(default_factory=set)
    cuda_compat: bool = False  # the image carries NVIDIA's forward-compatibility libraries (image_cuda_compat)
    rollout: RolloutRules = field(default_factory=RolloutRules)  # blue/green updates and data capture (deploy.rollout_rules)

    def refusals(self, service: str, operation: str, params: dict[str, Any]) -> list[str]:
        if service != "sagemaker":
            return []
        problems = self._name_reused(operation, params)
        check = getattr(self, f"_{operation}", None)
        return problems + (check(params) if check else []) + self.rollout.refusals(operation, params)

    def record(self, service: str, operation: str, params: dict[str, Any]) -> None:
        """After a successful create: its name is taken."""
        key = NAME_KEYS.get(operation) if service == "sagemaker" else None
        if key and key in params:
            self.created.add((operation, params[key]))

    def _name_reused(self, operation: str, params: dict[str, Any]) -> list[str]:
        key = NAME_KEYS.get(operation)
        if key and (operation, params.get(key)) in self.created:
            return [
                f"{key}: {params[key]!r} was created earlier in this run; SageMaker refuses a name already used in the account and region"
            ]
        return []

    def _CreateHyperParameterTuningJob(self, params: dict[str, Any]) -> list[str]:
        config = params.get("HyperParameterTuningJobConfig", {})
        strategy, problems = config.get("Strategy"), []
        if strategy == "Hyperband" and config.get("TrainingJobEarlyStoppingType", "Off") == "Auto":
            problems.append(f"HyperParameterTuningJobConfig.TrainingJobEarlyStoppingType: {HYPERBAND_AUTO}")
        if strategy == "Grid":
            ranges = config.get("ParameterRanges", {})
            if ranges.get("ContinuousParameterRanges") or ranges.get("IntegerParameterRanges"):
                problems.append("HyperParameterTuningJobConfig.ParameterRanges: Grid search takes categorical ranges only")
            if config.get("ResourceLimits", {}).get("MaxNumberOfTrainingJobs") is not None:
                problems.append(f"HyperParameterTuningJobConfig.ResourceLimits.MaxNumberOfTrainingJobs: {GRID_LIMIT}")
        definition = params.get("TrainingJobDefinition", {})
        resources = definition.get("ResourceConfig", {})
        return (
            problems
            + _channels("TrainingJobDefinition.", definition)
            + _volume("TrainingJobDefinition.ResourceConfig", resources, alias_allowed=False)
            + _never("TrainingJobDefinition.ResourceConfig", resources)
        )

    def _CreateTrainingJob(self, params: dict[str, Any]) -> list[str]:
        resources = params.get("ResourceConfig", {})
        return _channels("", params) + _volume("ResourceConfig", resources, alias_allowed=False) + _never("ResourceConfig", resources)

    def _CreateTransformJob(self, params: dict[str, Any]) -> list[str]:
        resources = params.get("TransformResources", {})
        problems = _volume("TransformResources", resources, alias_allowed=True) + _never("TransformResources", resources)
        instance_type = resources.get("InstanceType", "")
        if not gpu_hosts.is_nvidia(instance_type) or problems:
            return problems
        if reason := gpu_hosts.transform_problem(instance_type, self.cuda_compat):
            return [f"TransformResources.InstanceType: {reason}"]
        ami, env = gpu_hosts.transform_settings(instance_type, self.cuda_compat)
        if resources.get("TransformAmiVersion") != ami:
            problems.append(f"TransformResources.TransformAmiVersion: {resources.get('TransformAmiVersion')!r}; GPU transform needs {ami}")
        for key, value in env.items():
            if params.get("Environment", {}).get(key) != value:
                problems.append(f"Environment.{key}: must be {value!r} on {ami} (the image selects the compatibility libraries itself)")
        return problems

    def _CreateProcessingJob(self, params: dict[str, Any]) -> list[str]:
        cluster = params.get("ProcessingResources", {}).get("ClusterConfig", {})
        problems = _volume("ProcessingResources.ClusterConfig", cluster, alias_allowed=False)
        image = params.get("AppSpecification", {}).get("ImageUri", "")
        if CLARIFY_IMAGE in image and params.get("NetworkConfig", {}).get("EnableNetworkIsolation"):
            problems.append(
                "NetworkConfig.EnableNetworkIsolation: a Clarify job creates and calls a shadow endpoint; it cannot run isolated"
            )
        return problems

    def _CreateModel(self, params: dict[str, Any]) -> list[str]:
        name = params.get("ModelName", "")
        if params.get("PrimaryContainer", {}).get("Mode") == "MultiModel":
            self.multi_model.add(name)
        if params.get("EnableNetworkIsolation"):
            self.confined[name] = "network isolation"
        elif params.get("VpcConfig"):
            self.confined[name] = "a VPC"
        return []

    def _CreateEndpointConfig(self, params: dict[str, Any]) -> list[str]:
        problems = []
        for index, variant in enumerate(params.get("ProductionVariants", [])):
            instance_type = variant.get("InstanceType", "")
            if params.get("KmsKeyId") and has_local_nvme(instance_type):
                problems.append(
                    f"KmsKeyId: variant {index} runs on {instance_type}, which has local NVMe storage; SageMaker refuses the key"
                )
            if variant.get("ModelName") in self.multi_model and is_accelerated(instance_type):
                problems.append(f"ProductionVariants[{index}].InstanceType: {MULTI_MODEL_GPU.format(value=instance_type)}")
            problems += self._gpu_variant(f"ProductionVariants[{index}]", variant)
            if "ServerlessConfig" in variant:
                problems += self._serverless_variant(f"ProductionVariants[{index}]", variant)
        for index, variant in enumerate(params.get("ShadowProductionVariants", [])):
            problems += self._gpu_variant(f"ShadowProductionVariants[{index}]", variant)
        return problems

    def _serverless_variant(self, where: str, variant: dict[str, Any]) -> list[str]:
        """Serverless: CPU only, no multi-model, no VPC, no network isolation (the service refuses each)."""
        problems = [
            f"{where}.{key}: a serverless variant runs on CPU only and takes no {key}"
            for key in ("InstanceType", "AcceleratorType", "InferenceAmiVersion")
            if variant.get(key)
        ]
        model = variant.get("ModelName", "")
        if model in self.multi_model:
            problems.append(f"{where}.ModelName: {model!r} is a multi-model model; serverless endpoints serve one model")
        if model in self.confined:
            problems.append(f"{where}.ModelName: {model!r} runs with {self.confined[model]}, which serverless endpoints cannot take")
        return problems

    def _gpu_variant(self, where: str, variant: dict[str, Any]) -> list[str]:
        """A GPU variant (real-time or async) needs a host image whose driver runs the CUDA 13 build."""
        instance_type = variant.get("InstanceType", "")
        if not gpu_hosts.is_nvidia(instance_type):
            return []
        if reason := gpu_hosts.never(instance_type):
            return [f"{where}.InstanceType: {reason}"]
        reason = gpu_hosts.ami_problem(variant.get("InferenceAmiVersion"), self.cuda_compat)
        return [f"{where}.InferenceAmiVersion: {reason}"] if reason else []
