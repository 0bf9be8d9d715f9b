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

from image_classifier import params
from image_classifier.data.datasets import sample_seed
from image_classifier.data.readability import too_many_lost
from image_classifier.environment import TrainingEnvironment
from image_classifier.hyperparameters import Hyperparameters
from image_classifier.metrics import format_line
from image_classifier.training import inputs, optim
from image_classifier.training.background_writes import BackgroundWriter
from image_classifier.training.calibration import Calibration, calibrate
from image_classifier.training.checkpoints import RunCheckpoints
from image_classifier.training.diagnostics import TrainingChecks
from image_classifier.training.distributed import World, barrier, init_world, shutdown
from image_classifier.training.engine import EvalResult, Precision, StopFlag, StopRequested, evaluate, train_one_epoch
from image_classifier.training.outputs import FinalEvaluation, JobSummary, write_outputs
from image_classifier.training.profiling import SystemSampler, trace_window
from image_classifier.training.progress import Progress, Stateful
from image_classifier.training.trainee import Trainee, build_model, prepare_trainee

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
    try:
        # 1. data: the channels indexed, every image decoded once, the unreadable ones dropped
        workers = hp.num_workers if hp.num_workers is not None else inputs.default_workers(env.num_cpus, world.local_size, use_cuda)
        data = inputs.prepare_data(env, hp, world, workers)
        # 2. model: warm start or pretrained backbone, a head for these classes, frozen stages
        built = build_model(env, hp, data.classes)
        # 3. how it runs: precision, device, Debugger, the feature cache, compile, DDP
        trainee = prepare_trainee(env, hp, built, world, device, len(data.classes))
        # 4. loaders, optimizer and schedule
        pin = use_cuda
        threads = max(2, env.num_cpus // world.local_size)
        loaders = inputs.image_loaders(
            data, built.data_config, hp, world, workers=workers, pin=pin, threads=threads, feature_cache_on=trainee.on_features
        )
        optimizer = optim.create_optimizer(trainee.model, hp, device)
        scheduler = optim.create_scheduler(optimizer, hp, steps_per_epoch=max(1, len(loaders.train)))
        parts = Stateful(trainee.model, optimizer, scheduler, trainee.precision.scaler)
        stop = StopFlag()
        stop.install()
        with BackgroundWriter() as writer:
            # 5. resume this run's newest checkpoint, if any
            saved = RunCheckpoints(env.checkpoint_dir, data.classes, hp.model_dump(), writer, world.is_main, env.job_named)
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
            system = fit(
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
                total_images=data.total,
            )
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
        shutdown(world)


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
    total_images: int,
) -> dict[str, float]:
    """The epochs from ``progress``'s position to ``hp.epochs`` or early stop; returns the system summary."""
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
        for epoch in range(first_epoch, hp.epochs):
            start_step = progress.step if epoch == first_epoch else 0
            loaders.start_epoch(epoch, start_step * hp.batch_size)
            # dropout and the like draw from the main RNG: a fixed state per (seed, rank, epoch, step)
            # makes a job resumed from an epoch checkpoint draw exactly what an uninterrupted one does
            torch.manual_seed(sample_seed(hp.seed + world.rank, epoch, start_step))
            trainee.train_mode()
            try:
                result = train_one_epoch(
                    model=trainee.runner,
                    loader=loaders.train,
                    optimizer=parts.optimizer,
                    scheduler=parts.scheduler,
                    loss_fn=trainee.loss_fn,
                    device=device,
                    precision=trainee.runner_precision,
                    epoch=epoch,
                    start_step=start_step,
                    clip_grad_norm=hp.clip_grad_norm,
                    checks=checks,
                    world=world,
                    stop=stop,
                    log_interval=hp.log_interval,
                    profiler=profiler if epoch == first_epoch else None,
                )
            except StopRequested as interrupted:
                saved.save_now(progress, parts, epoch, interrupted.step or 0)
                raise
            trainee.eval_mode()
            valid = evaluate(trainee.runner, loaders.valid, device, trainee.runner_precision, world)
            progress.bad_images += result.bad_images
            entry = {
                "epoch": epoch + 1,
                "train_loss": result.loss,
                "train_acc": result.accuracy,
                "valid_loss": valid.loss,
                "valid_acc": valid.accuracy,
                "lr": result.lr,
                "images_per_sec": result.images / max(result.seconds, 1e-9),
                "epoch_seconds": result.seconds,
                "data_wait_fraction": result.data_wait_fraction,
            }
            improved = progress.record(entry, trainee.model)
            if tensorboard is not None:
                log_epoch(entry, progress.best_valid_acc, tensorboard)
            if checks is not None:
                checks.on_epoch(epoch + 1, result.loss, result.accuracy, valid.loss, valid.accuracy)
            saved.save_epoch(progress, parts, improved)
            barrier(world)
            if error := too_many_lost(progress.bad_images, total_images, hp.max_bad_fraction):
                raise error
            if progress.patience_spent(hp.early_stopping_patience):
                log.info(format_line("early_stop", epoch=epoch + 1, best_epoch=progress.best["epoch"], patience=hp.early_stopping_patience))
                progress.early_stopped = True
                break
        if trainee.hook:
            trainee.hook.close()
        return sampler.summary()


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
