"""What SageMaker refuses and neither botocore nor the emulator does, refused here first.

``RequestRules``: the configuration's rules (``deploy.refusals``, with the same messages) on each
request as the SDK finally builds it (the SDK adds the organisation's defaults from its own
config.yaml, which the configuration never sees), plus name reuse within a session. ``deploy.aws`` runs them, with the service model's
  constraints, on every request before it is sent; the tests run them on every recorded request.

docs/aws.md lists every rule with the message it prints.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from deploy import gpu_hosts, kms
from deploy.instances import has_local_nvme, is_accelerated
from deploy.refusals import GRID_LIMIT, HYPERBAND_AUTO, MULTI_MODEL_GPU
from deploy.rollout_rules import RolloutRules

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


class RequestRefused(ValueError):
    """A request AWS would refuse, stopped before it was sent."""

    def __init__(self, operation: str, problems: list[str]):
        self.operation, self.problems = operation, problems
        super().__init__(f"AWS would refuse {operation}; nothing was sent:\n" + "\n".join(f"  {p}" for p in problems))


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


def _tuning_resources(params: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """Each instance setting of a tuning job, as the pinned SDK sends it: where it sits and its fields.

    SDK v2 sends ``HyperParameterTuningResourceConfig`` (not ``ResourceConfig``), one definition in
    ``TrainingJobDefinition`` or several in ``TrainingJobDefinitions`` (a tuner of several estimators),
    and with instance configs (``InstanceConfigs``) one type per entry under the definition's one
    volume key: each entry is checked with that key.
    """
    definitions = [("TrainingJobDefinition", params["TrainingJobDefinition"])] if "TrainingJobDefinition" in params else []
    definitions += [(f"TrainingJobDefinitions[{i}]", d) for i, d in enumerate(params.get("TrainingJobDefinitions", []))]
    out = []
    for prefix, definition in definitions:
        for key in ("ResourceConfig", "HyperParameterTuningResourceConfig"):
            resources = definition.get(key)
            if not resources:
                continue
            out.append((f"{prefix}.{key}", resources))
            for index, entry in enumerate(resources.get("InstanceConfigs", [])):
                with_key = {**entry, "VolumeKmsKeyId": resources.get("VolumeKmsKeyId")}
                out.append((f"{prefix}.{key}.InstanceConfigs[{index}]", with_key))
    return out


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
        for where, resources in _tuning_resources(params):
            problems += _volume(where, resources, alias_allowed=False) + _never(where, resources)
        definitions = [("TrainingJobDefinition.", params["TrainingJobDefinition"])] if "TrainingJobDefinition" in params else []
        definitions += [(f"TrainingJobDefinitions[{i}].", d) for i, d in enumerate(params.get("TrainingJobDefinitions", []))]
        for where, definition in definitions:
            problems += _channels(where, definition)
        return problems

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
