"""The model as a job trains it: built (warm start or pretrained), frozen, placed and wrapped.

``build_model`` starts from a previous artifact (the ``model`` channel) or the backbone's
pretrained weights and applies the freeze policy. ``prepare_trainee`` then chooses the precision
(measured once per job on CPU), moves the model to its device and memory format, attaches the
Debugger hook, and decides what the epochs call: the full model (compiled, in DDP) or, with the
feature cache, its classifier alone.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from image_classifier import params
from image_classifier.data.presets import DataConfig
from image_classifier.environment import TrainingEnvironment
from image_classifier.errors import UserError
from image_classifier.hyperparameters import Hyperparameters
from image_classifier.metrics import format_line
from image_classifier.modeling.factory import build_architecture, classifier_of, create_model, data_config_for, replace_head
from image_classifier.modeling.freezing import apply_freeze, freeze_frozen_norms
from image_classifier.modeling.warm_start import warm_start
from image_classifier.training import feature_cache
from image_classifier.training.debugger import DebuggerHook, create_hook
from image_classifier.training.distributed import World
from image_classifier.training.engine import Precision
from image_classifier.training.precision import AMP_MEASUREMENT_FILE, choose_amp, measure_cpu_bf16, remembered

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Trainee:
    """The model as the epochs run it.

    ``model`` is the plain module (checkpoints, best weights, the artifact); ``full`` runs it
    (compiled, wrapped in DDP); ``runner`` is what the epochs call: ``full``, or the classifier
    alone on cached backbone features, with ``runner_precision``. The Debugger hook, if any,
    watches ``model`` and ``loss_fn`` (the very module the epochs use).
    """

    model: nn.Module
    full: nn.Module
    precision: Precision
    runner: nn.Module
    runner_precision: Precision
    loss_fn: nn.Module
    hook: DebuggerHook | None

    @property
    def on_features(self) -> bool:
        return self.runner is not self.full

    def train_mode(self) -> None:
        self.runner.train()
        freeze_frozen_norms(self.model)
        if self.hook:
            self.hook.train()

    def eval_mode(self) -> None:
        if self.hook:
            self.hook.eval()


@dataclass(frozen=True)
class BuiltModel:
    model: nn.Module
    data_config: DataConfig
    pretrained: dict[str, str] | None  # the starting weights' source and sha256


def build_model(env: TrainingEnvironment, hp: Hyperparameters, classes: list[str]) -> BuiltModel:
    """A previous artifact (``model`` channel) or the backbone's pretrained weights; then the freeze policy."""
    warm_channel = env.channels.get(params.MODEL_CHANNEL)
    if warm_channel is not None:
        model = build_architecture(hp.model)
        replace_head(model, len(classes))
        data_config = data_config_for(hp.model, model, hp.image_size)
        workdir = Path(tempfile.mkdtemp(prefix="train-"))
        try:
            sha256 = warm_start(warm_channel, model, hp.model, classes, workdir)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        pretrained: dict[str, str] | None = {"source": "warm_start", "sha256": sha256}
    else:
        created = create_model(
            hp.model,
            len(classes),
            pretrained=hp.pretrained,
            image_size=hp.image_size,
            pretrained_channel=env.channels.get(params.PRETRAINED_CHANNEL),
        )
        model, data_config = created.model, created.data_config
        pretrained = created.weights.fingerprint() if created.weights else None
    apply_freeze(model, hp.trainable_stages)
    log.info(
        format_line(
            "model",
            name=hp.model,
            freeze=hp.freeze,
            parameters=sum(p.numel() for p in model.parameters()),
            trainable=sum(p.numel() for p in model.parameters() if p.requires_grad),
            input_size=data_config.input_size,
        )
    )
    return BuiltModel(model, data_config, pretrained)


def prepare_trainee(
    env: TrainingEnvironment,
    hp: Hyperparameters,
    built: BuiltModel,
    world: World,
    device: torch.device,
    num_classes: int,
    *,
    sharded: bool = False,
) -> Trainee:
    """Precision (measured once per job on CPU), device and memory format, then what the epochs call."""
    model, input_size = built.model, built.data_config.input_size
    probe = remembered(
        lambda: measure_cpu_bf16(model, input_size, num_classes, hp.channels_last, min(hp.batch_size, 8)),
        env.checkpoint_dir / AMP_MEASUREMENT_FILE,
        f"{hp.model}@{input_size}",
    )
    dtype, needs_scaler = choose_amp(hp.amp, device, probe=probe)
    precision = Precision(dtype, torch.amp.GradScaler("cuda") if needs_scaler else None, hp.channels_last)
    model.to(device)
    if hp.channels_last:
        model.to(memory_format=torch.channels_last)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=hp.label_smoothing)
    hook = create_hook(env.debug_hook_config, model, loss_fn)
    decision = feature_cache.decide(
        hp, model, classifier_of(model), input_size=input_size, device=device, debugger=hook is not None, sharded=sharded
    )
    decision.log(hp)
    full: nn.Module = model
    if hp.compile:
        # Inductor builds C++ kernels on CPU and Triton launchers (with a C compiler) on GPU;
        # the image ships without compilers, so say so instead of failing deep inside torch.
        compiler = os.environ.get("CXX", "g++") if device.type == "cpu" else os.environ.get("CC", "gcc")
        if not shutil.which(compiler):
            raise UserError(f"hyperparameter compile=true needs a compiler ({compiler}) and none is installed; use compile=false")
        full = torch.compile(model)  # type: ignore[assignment]
    device_ids = [device.index] if device.type == "cuda" else None
    if world.distributed and not decision.enabled:
        full = nn.parallel.DistributedDataParallel(full, device_ids=device_ids)
    if not decision.enabled:
        return Trainee(model, full, precision, full, precision, loss_fn, hook)
    head: nn.Module = feature_cache.FeatureHead(classifier_of(model), feature_cache.head_dropout(model, classifier_of(model)))
    if world.distributed:
        head = nn.parallel.DistributedDataParallel(head, device_ids=device_ids)
    return Trainee(model, full, precision, head, Precision(precision.dtype, precision.scaler, channels_last=False), loss_fn, hook)
