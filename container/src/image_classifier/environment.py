"""The read-only view of the SageMaker training environment, built once per process.

Sources, as SageMaker provides them to a bring-your-own container: the JSON files under
``<base>/input/config`` and, where present (script mode, local tools), the ``SM_*`` variables,
which take precedence. ``SAGEMAKER_BASE_DIR`` moves the base (default ``/opt/ml``) so that tests
and the demo run the same code on a temporary folder. Everything else receives values from this
object, never paths or variables of its own.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from image_classifier import params
from image_classifier.errors import UserError


def _read_json(path: Path, default: Any) -> Any:
    if not path.exists():
        return default
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read {path.name}: {exc}") from exc


def _cuda_device_count() -> int:
    try:
        import torch

        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    except Exception:  # noqa: BLE001 - a broken CUDA install means "no GPU", not a crash
        return 0


@dataclass(frozen=True)
class TrainingEnvironment:
    """Everything the trainer needs to know about where it runs. Immutable."""

    base_dir: Path
    hyperparameters: Mapping[str, str]
    channels: Mapping[str, Path]
    hosts: tuple[str, ...]
    current_host: str
    num_gpus: int
    num_cpus: int
    job_name: str
    debug_hook_config: Path | None
    model_dir: Path  # SM_MODEL_DIR, else <base>/model
    output_data_dir: Path  # SM_OUTPUT_DATA_DIR, else <base>/output/data
    network_interface_name: str | None = None  # resourceconfig.json: the interface between hosts
    instance_type: str | None = None  # resourceconfig.json's current_instance_type (absent in local runs)
    input_data_config: Mapping[str, Any] = field(default_factory=dict)
    job_named: bool = False  # TRAINING_JOB_NAME was set (SageMaker, local mode): the job checkpoints in a folder of its own

    @property
    def tensorboard_dir(self) -> Path:
        return self.base_dir / params.TENSORBOARD_DIR

    @property
    def failure_file(self) -> Path:
        return self.base_dir / params.FAILURE_FILE

    @property
    def checkpoint_dir(self) -> Path:
        """``checkpoints/<job name>/`` in a named job, else ``checkpoints/``.

        SageMaker gives every trial of a tuning job the same checkpoint S3 prefix and downloads all
        of it into ``/opt/ml/checkpoints`` at start: a folder per job keeps the trials' files apart,
        so a Spot restart (same job name) finds its own checkpoints and nobody else's.
        """
        root = self.base_dir / params.CHECKPOINT_DIR
        return root / (re.sub(r"[^A-Za-z0-9-]+", "-", self.job_name).strip("-") or "job") if self.job_named else root

    @property
    def host_rank(self) -> int:
        return self.hosts.index(self.current_host)

    @property
    def is_multi_host(self) -> bool:
        return len(self.hosts) > 1

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> TrainingEnvironment:
        env = os.environ if environ is None else environ
        base = Path(env.get(params.BASE_DIR_ENV) or params.DEFAULT_BASE_DIR)
        config = base / params.CONFIG_DIR

        raw_hps = _read_json(config / params.HYPERPARAMETERS_FILE, {})
        if not isinstance(raw_hps, dict):
            raise UserError(f"{params.HYPERPARAMETERS_FILE} must hold a JSON object")
        hyperparameters = {str(k): str(v) for k, v in raw_hps.items()}

        data_config = _read_json(config / params.INPUT_DATA_CONFIG_FILE, {})
        resource = _read_json(config / params.RESOURCE_CONFIG_FILE, {})

        hosts = tuple(json.loads(env[params.SM_HOSTS_ENV])) if env.get(params.SM_HOSTS_ENV) else tuple(resource.get("hosts") or ())
        current = env.get(params.SM_CURRENT_HOST_ENV) or resource.get("current_host") or (hosts[0] if hosts else "algo-1")
        if not hosts:
            hosts = (current,)
        if current not in hosts:
            raise UserError(f"current host {current!r} is not in the host list {list(hosts)}")

        gpus_env = env.get(params.SM_NUM_GPUS_ENV)
        num_gpus = int(gpus_env) if gpus_env else _cuda_device_count()
        cpus_env = env.get(params.SM_NUM_CPUS_ENV)
        num_cpus = int(cpus_env) if cpus_env else len(os.sched_getaffinity(0))

        channels: dict[str, Path] = {}
        data_dir = base / params.DATA_DIR
        if data_dir.is_dir():
            channels.update({p.name: p for p in sorted(data_dir.iterdir()) if p.is_dir()})
        for name in data_config:
            channels.setdefault(name, data_dir / name)
        for key, value in env.items():
            if key.startswith(params.SM_CHANNEL_PREFIX) and value:
                channels[key[len(params.SM_CHANNEL_PREFIX) :].lower()] = Path(value)

        hook = config / params.DEBUG_HOOK_CONFIG_FILE
        return cls(
            base_dir=base,
            hyperparameters=MappingProxyType(hyperparameters),
            channels=MappingProxyType(channels),
            hosts=hosts,
            current_host=current,
            num_gpus=num_gpus,
            num_cpus=num_cpus,
            job_name=env.get(params.TRAINING_JOB_NAME_ENV) or "local",
            job_named=bool(env.get(params.TRAINING_JOB_NAME_ENV)),
            debug_hook_config=hook if hook.exists() else None,
            model_dir=Path(env.get(params.SM_MODEL_DIR_ENV) or base / params.MODEL_DIR),
            output_data_dir=Path(env.get(params.SM_OUTPUT_DATA_DIR_ENV) or base / params.OUTPUT_DATA_DIR),
            network_interface_name=resource.get("network_interface_name") or None,
            instance_type=resource.get("current_instance_type") or None,
            input_data_config=MappingProxyType(data_config),
        )
