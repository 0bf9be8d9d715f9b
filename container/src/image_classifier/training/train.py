"""Fine-tune a pretrained image classifier under the SageMaker training contract.

SageMaker (or ``docker run IMAGE train``) runs it with no arguments: hyperparameters come from
``/opt/ml/input/config/hyperparameters.json``. On a laptop the same code runs on any folder::

    SAGEMAKER_BASE_DIR=/tmp/ml train --model resnet18 --epochs 3     # flags override the JSON
    SM_NUM_GPUS=2 train                                              # torchrun, one process per GPU

``main(env, hp)`` is importable and returns the final metrics; it reads top to bottom as the
job's phases. ``launcher.cli`` wraps it with the flags, the failure file and torchrun.
"""

from __future__ import annotations

import logging
import random
import time

import numpy as np
import torch
from torch import nn

from image_classifier import defaults
from image_classifier.environment import TrainingEnvironment
from image_classifier.hyperparameters import Hyperparameters
from image_classifier.metrics import format_line
from image_classifier.training import inputs, optim, preflight
from image_classifier.training.background_writes import BackgroundWriter
from image_classifier.training.calibration import Calibration, calibrate
from image_classifier.training.checkpoints import RunCheckpoints
from image_classifier.training.diagnostics import TrainingChecks
from image_classifier.training.distributed import World, barrier, init_world, shutdown
from image_classifier.training.engine import EvalResult, Precision, StopFlag, evaluate
from image_classifier.training.epochs import EpochCounts, fit
from image_classifier.training.outputs import FinalEvaluation, JobSummary, write_outputs
from image_classifier.training.progress import Progress, Stateful
from image_classifier.training.trainee import build_model, prepare_trainee

log = logging.getLogger(__name__)


def main(env: TrainingEnvironment, hp: Hyperparameters) -> dict[str, float]:
    started = time.perf_counter()
    use_cuda = torch.cuda.is_available() and env.num_gpus > 0
    world = init_world(use_cuda)
    device = torch.device("cuda", world.local_rank) if use_cuda else torch.device("cpu")
    if not use_cuda:
        torch.set_num_threads(max(1, env.num_cpus // world.local_size))
    seed_everything(hp.seed + world.rank, hp.deterministic)
    log.info(
        format_line(
            "start", job=env.job_name, model=hp.model, device=str(device), world_size=world.size, rank=world.rank, hosts=len(env.hosts)
        )
    )
    stop = StopFlag()
    try:
        # 1. data: the channels indexed, every image decoded once, the unreadable ones dropped
        workers = hp.num_workers if hp.num_workers is not None else inputs.default_workers(env.num_cpus, world.local_size, use_cuda)
        data = preflight.prepare_data(env, hp, world, device, workers)
        given, hp = hp, resolve_defaults(hp, len(data.train), len(data.classes), world)
        # 2. model: warm start or pretrained backbone, a head for these classes, frozen stages
        built = build_model(env, hp, data.classes)
        # 3. how it runs: precision, device, Debugger, the feature cache, compile, DDP
        trainee = prepare_trainee(env, hp, built, world, device, len(data.classes), sharded=data.sharded)
        # 4. loaders, optimizer and schedule
        pin = use_cuda
        threads = max(2, env.num_cpus // world.local_size)
        loaders = inputs.image_loaders(
            data, built.data_config, hp, world, workers=workers, pin=pin, threads=threads, feature_cache_on=trainee.on_features
        )
        optimizer = optim.create_optimizer(trainee.model, hp, device)
        scheduler = optim.create_scheduler(optimizer, hp, steps_per_epoch=max(1, len(loaders.train)))
        parts = Stateful(trainee.model, optimizer, scheduler, trainee.precision.scaler)
        stop.install()
        with BackgroundWriter() as writer:
            # 5. resume this run's newest checkpoint, if any
            # the run is what the user asked for: the rule's values follow from it (and from the data, the world
            # size), so a restart that may change the epochs or the processes keeps resuming the same run
            saved = RunCheckpoints(env.checkpoint_dir, data.classes, given.model_dump(), writer, world.is_main, env.job_named)
            progress = saved.resume(parts, bad_images=data.bad_images)
            if trainee.on_features:  # after resuming: the features of the backbone the checkpoint holds
                loaders = inputs.feature_loaders(
                    trainee.model,
                    data,
                    built.data_config,
                    hp,
                    world,
                    workers=workers,
                    pin=pin,
                    device=device,
                    precision=trainee.precision,
                    stop=stop,
                )
            # 6. the epochs
            checks = TrainingChecks() if hp.checks else None
            tensorboard = open_tensorboard(env) if world.is_main else None
            fitted = fit(
                env=env,
                hp=hp,
                trainee=trainee,
                loaders=loaders,
                parts=parts,
                progress=progress,
                saved=saved,
                world=world,
                device=device,
                stop=stop,
                checks=checks,
                tensorboard=tensorboard,
                counts=EpochCounts(len(data.train), len(data.valid), total=data.total, preflight_bad=data.bad_images),
            )
            progress, system = fitted.progress, fitted.system
        # 7. the kept model (best validation epoch) on the test split
        if progress.best_state is not None:
            trainee.model.load_state_dict(progress.best_state)
        valid = evaluate(trainee.runner, loaders.valid, device, trainee.runner_precision, world, keep_predictions=True)
        if data.test is not None:
            held_out = inputs.held_out_loader(data, built.data_config, hp, world, workers=workers, pin=pin)
            final = final_evaluation(trainee.full, held_out, "test", trainee.precision, progress, world, device)
        else:
            final = FinalEvaluation(final_metrics(progress), valid, "validation")
        # 8. one temperature on validation: probabilities that mean what they say
        calibration = calibrate_outputs(valid, final)
        final.metrics["train_seconds"] = time.perf_counter() - started
        # 9. the artifact, metrics and report
        if world.is_main:
            log.info(format_line("final", **final.metrics))
            summary = JobSummary(checks, system, built.pretrained, calibration)
            write_outputs(
                env,
                hp,
                model=trainee.model,
                classes=data.classes,
                data_config=built.data_config,
                progress=progress,
                final=final,
                summary=summary,
                tensorboard=tensorboard,
            )
            saved.finish()
        barrier(world)
        return final.metrics
    finally:
        stop.restore()
        shutdown(world)


def resolve_defaults(hp: Hyperparameters, train_images: int, classes: int, world: World) -> Hyperparameters:
    """What the user did not give of the rule's fields, from what the data now tells (``defaults.py``)."""
    facts = defaults.Facts.of(hp, train_images, classes, world.size)
    resolved, chosen = defaults.resolve(hp, facts)
    log.info(
        format_line(
            "defaults",
            **{k: str(v) for k, v in chosen.items()},
            given=",".join(sorted(set(defaults.RULE_FIELDS) & hp.model_fields_set)) or "none",
        )
    )
    return resolved


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    elif torch.cuda.is_available():
        torch.backends.cudnn.benchmark = True


def open_tensorboard(env: TrainingEnvironment):
    from torch.utils.tensorboard import SummaryWriter

    env.output_data_dir.mkdir(parents=True, exist_ok=True)
    return SummaryWriter(str(env.tensorboard_dir))


def final_metrics(progress: Progress) -> dict[str, float]:
    return {"best_valid_acc": progress.best_valid_acc, "bad_images": progress.bad_images, "epochs_completed": len(progress.history)}


def final_evaluation(
    model: nn.Module, loader, split: str, precision: Precision, progress: Progress, world: World, device: torch.device
) -> FinalEvaluation:
    """Loss, accuracy and top-5 of the kept model, with every prediction for the confusion matrix."""
    metrics = final_metrics(progress)
    result = evaluate(model, loader, device, precision, world, keep_predictions=True)
    if split == "test":
        metrics.update(test_loss=result.loss, test_acc=result.accuracy, test_top5_acc=result.top5)
    return FinalEvaluation(metrics, result, split)


def calibrate_outputs(valid: EvalResult, final: FinalEvaluation) -> Calibration | None:
    """Fit the temperature on validation's logits; measure it there and on test."""
    if valid.logits is None or not len(valid.labels):
        return None
    labels = torch.tensor(valid.labels)
    test = None
    if final.split == "test" and final.result.logits is not None:
        test = (final.result.logits, torch.tensor(final.result.labels))
    return calibrate((valid.logits, labels), test)
