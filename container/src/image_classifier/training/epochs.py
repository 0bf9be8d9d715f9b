"""The epochs of a job: train, validate, record, checkpoint, until the last epoch or early stop.

``fit`` runs from the position ``progress`` holds (a resumed job's) and returns the progress and the
system summary ``main`` needs. Unreadable images count per pass (an image that no longer decodes is
met again every epoch, and counts once): the job's ``bad_images`` is the pre-flight's count plus the
worst epoch's, and a pass that loses more than ``max_bad_fraction`` of its split stops the job with
the reason (training as it goes, ``epoch_watch``; validation at its end).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from image_classifier import params
from image_classifier.data.datasets import sample_seed
from image_classifier.data.readability import too_many_lost
from image_classifier.environment import TrainingEnvironment
from image_classifier.hyperparameters import Hyperparameters
from image_classifier.metrics import format_line
from image_classifier.training import inputs
from image_classifier.training.checkpoints import RunCheckpoints
from image_classifier.training.diagnostics import TrainingChecks
from image_classifier.training.distributed import World, barrier
from image_classifier.training.engine import EvalResult, StopFlag, StopRequested, evaluate, train_one_epoch
from image_classifier.training.epoch_watch import EpochResult, EpochWatch
from image_classifier.training.profiling import SystemSampler, trace_window
from image_classifier.training.progress import Progress, Stateful
from image_classifier.training.trainee import Trainee

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EpochCounts:
    """The sizes the bad-image bounds are taken against."""

    train: int
    valid: int
    total: int
    preflight_bad: int


@dataclass(frozen=True)
class Fitted:
    progress: Progress
    system: dict[str, float]


def fit(
    *,
    env: TrainingEnvironment,
    hp: Hyperparameters,
    trainee: Trainee,
    loaders: inputs.Loaders,
    parts: Stateful,
    progress: Progress,
    saved: RunCheckpoints,
    world: World,
    device: torch.device,
    stop: StopFlag,
    checks: TrainingChecks | None,
    tensorboard,
    counts: EpochCounts,
) -> Fitted:
    """The epochs from ``progress``'s position to ``hp.epochs`` or early stop."""
    first_epoch = progress.epoch
    with (
        SystemSampler() as sampler,
        trace_window(
            hp.profile and world.is_main,
            hp.profile_start_step,
            hp.profile_steps,
            env.tensorboard_dir / params.PROFILER_DIR,
            env.output_data_dir / params.PROFILER_DIR / "top_operators.txt",
        ) as profiler,
    ):
        try:
            for epoch in range(first_epoch, hp.epochs):
                start_step = progress.step if epoch == first_epoch else 0
                loaders.start_epoch(epoch, start_step * hp.batch_size)
                # dropout and the like draw from the main RNG: a fixed state per (seed, rank, epoch, step)
                # makes a job resumed from an epoch checkpoint draw exactly what an uninterrupted one does
                torch.manual_seed(sample_seed(hp.seed + world.rank, epoch, start_step))
                trainee.train_mode()
                watch = EpochWatch(
                    epoch=epoch,
                    start_step=start_step,
                    device=device,
                    world=world,
                    stop=stop,
                    optimizer=parts.optimizer,
                    log_interval=hp.log_interval,
                    epoch_images=counts.train,
                    max_bad_fraction=hp.max_bad_fraction,
                    checks=checks,
                    profiler=profiler if epoch == first_epoch else None,
                )
                try:
                    result = train_one_epoch(
                        trainee.runner,
                        loaders.train,
                        parts.optimizer,
                        parts.scheduler,
                        trainee.loss_fn,
                        device,
                        trainee.runner_precision,
                        hp.clip_grad_norm,
                        watch,
                    )
                except StopRequested as interrupted:
                    saved.save_now(progress, parts, epoch, interrupted.step or 0)
                    raise
                trainee.eval_mode()
                valid = evaluate(trainee.runner, loaders.valid, device, trainee.runner_precision, world)
                if error := too_many_lost(valid.bad_images, counts.valid, hp.max_bad_fraction):
                    raise error
                progress.bad_images = max(progress.bad_images, counts.preflight_bad + result.bad_images + valid.bad_images)
                improved = progress.record(epoch_entry(epoch, result, valid), trainee.model)
                if tensorboard is not None:
                    log_epoch(progress.history[-1], progress.best_valid_acc, tensorboard)
                if checks is not None:
                    checks.on_epoch(epoch + 1, result.loss, result.accuracy, valid.loss, valid.accuracy)
                saved.save_epoch(progress, parts, improved)
                barrier(world)
                if error := too_many_lost(progress.bad_images, counts.total, hp.max_bad_fraction):
                    raise error
                if progress.patience_spent(hp.early_stopping_patience):
                    log.info(
                        format_line("early_stop", epoch=epoch + 1, best_epoch=progress.best["epoch"], patience=hp.early_stopping_patience)
                    )
                    progress.early_stopped = True
                    break
        finally:
            if trainee.hook:
                trainee.hook.close()
        return Fitted(progress, sampler.summary())


def epoch_entry(epoch: int, result: EpochResult, valid: EvalResult) -> dict[str, float]:
    return {
        "epoch": epoch + 1,
        "train_loss": result.loss,
        "train_acc": result.accuracy,
        "valid_loss": valid.loss,
        "valid_acc": valid.accuracy,
        "valid_images": valid.images,
        "lr": result.lr,
        "images_per_sec": result.images / max(result.seconds, 1e-9),
        "epoch_seconds": result.seconds,
        "data_wait_fraction": result.data_wait_fraction,
    }


def log_epoch(entry: dict[str, float], best_valid_acc: float, tensorboard) -> None:
    """The ``epoch`` line the tuning regexes read (with the best accuracy so far, the objective), and TensorBoard scalars."""
    values: dict[str, float] = {}
    for key, value in entry.items():
        if key != "data_wait_fraction":
            values[key] = value
        if key == "valid_acc":
            values["best_valid_acc"] = best_valid_acc
    log.info(format_line("epoch", **values, data_wait=entry["data_wait_fraction"]))
    for key in ("train_loss", "train_acc", "valid_loss", "valid_acc", "lr", "images_per_sec"):
        tensorboard.add_scalar(key, entry[key], entry["epoch"])
    tensorboard.flush()
