"""Fine-tune a pretrained image classifier under the SageMaker training contract.

SageMaker (or ``docker run IMAGE train``) runs it with no arguments: hyperparameters come from
``/opt/ml/input/config/hyperparameters.json``. On a laptop the same code runs on any folder::

    SAGEMAKER_BASE_DIR=/tmp/ml train --model resnet18 --epochs 3     # flags override the JSON
    SM_NUM_GPUS=2 train                                              # torchrun, one process per GPU

``main(env, hp)`` is importable and returns the final metrics; ``launcher.cli`` wraps it with
the failure file, host resolution and torchrun.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import random
import shutil
import tarfile
import tempfile
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from torch import nn
from torch.utils.data import DataLoader, SequentialSampler

from image_classifier import params
from image_classifier.data import image_cache
from image_classifier.data.datasets import LabelledImages, ResumableSampler, collate, sample_seed
from image_classifier.data.discovery import ImageFolderIndex, check_same_classes, index_split, resolve_splits
from image_classifier.data.loading import find_unreadable
from image_classifier.data.presets import DataConfig, eval_transform, train_transform
from image_classifier.environment import TrainingEnvironment
from image_classifier.errors import UserError
from image_classifier.hyperparameters import Hyperparameters
from image_classifier.metrics import format_line
from image_classifier.model_card import read_card, save_weights, write_artifact
from image_classifier.modeling.factory import (
    build_architecture,
    classifier_of,
    create_model,
    data_config_for,
    load_backbone_weights,
    replace_head,
)
from image_classifier.modeling.freezing import apply_freeze, freeze_frozen_norms, parameter_groups
from image_classifier.modeling.weights_io import read_state_dict, sha256_of
from image_classifier.training import feature_cache, reports
from image_classifier.training.background_writes import BackgroundWriter, snapshot
from image_classifier.training.checkpoints import foreign_reason, load_latest, run_fingerprint, save_checkpoint, write_or_warn
from image_classifier.training.debugger import create_hook
from image_classifier.training.diagnostics import TrainingChecks
from image_classifier.training.distributed import World, barrier, gather_lists, init_world, shutdown
from image_classifier.training.engine import Precision, StopFlag, evaluate, train_one_epoch
from image_classifier.training.precision import AMP_MEASUREMENT_FILE, choose_amp, measure_cpu_bf16, remembered
from image_classifier.training.profiling import SystemSampler, trace_window

log = logging.getLogger(__name__)

BEST_WEIGHTS_FILE = "best-model.safetensors"

ARGUMENT_GROUPS = {
    "model": ("model", "pretrained", "image_size", "freeze"),
    "optimisation": (
        "epochs",
        "batch_size",
        "optimizer",
        "lr",
        "backbone_lr_mult",
        "weight_decay",
        "momentum",
        "scheduler",
        "warmup_epochs",
        "step_size",
        "gamma",
        "label_smoothing",
        "clip_grad_norm",
        "early_stopping_patience",
        "seed",
        "deterministic",
    ),
    "data": ("augment", "num_workers", "max_bad_fraction", "cache_images"),
    "speed": ("amp", "channels_last", "compile", "processes_per_host", "feature_cache"),
    "observability": ("log_interval", "checks", "profile", "profile_start_step", "profile_steps"),
}


def get_args_parser() -> argparse.ArgumentParser:
    """Flags mirror the hyperparameters one to one; given flags override hyperparameters.json."""
    parser = argparse.ArgumentParser(prog="train", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    fields = Hyperparameters.model_fields
    for title, names in ARGUMENT_GROUPS.items():
        group = parser.add_argument_group(title)
        for name in names:
            info = fields[name]
            help_text = f"{info.description or ''} (default: {info.default})".strip()
            group.add_argument(f"--{name.replace('_', '-')}", dest=name, default=argparse.SUPPRESS, help=help_text)
    return parser


# --- data ------------------------------------------------------------------------------------


def index_data(env: TrainingEnvironment) -> tuple[ImageFolderIndex, ImageFolderIndex, ImageFolderIndex | None]:
    splits = resolve_splits(env.channels)
    train = index_split("train", splits.train)
    valid = index_split("validation", splits.validation)
    test = index_split("test", splits.test) if splits.test else None
    check_same_classes(train, valid, *([test] if test else []))
    return train, valid, test


def drop_unreadable(indices: list[ImageFolderIndex], hp: Hyperparameters, world: World, workers: int) -> tuple[list[list], int]:
    """Decode every image once; skip (and count) the unreadable ones; fail above the threshold."""
    started = time.perf_counter()
    every = [path for index in indices for path, _ in index.samples]
    bad = find_unreadable(every, workers) if world.is_main else {}
    bad_paths = set(gather_lists(sorted(str(p) for p in bad), world))
    reasons = {str(p): r for p, r in bad.items()}
    for path in sorted(bad_paths)[:20]:
        log.warning("event=unreadable_image path=%s reason=%s", path, reasons.get(path, "?").split(": ", 1)[-1].replace(" ", "_")[:160])
    fraction = len(bad_paths) / max(len(every), 1)
    log.info(format_line("preflight", images=len(every), bad_images=len(bad_paths), seconds=time.perf_counter() - started))
    if fraction > hp.max_bad_fraction:
        raise UserError(
            f"{len(bad_paths)} of {len(every)} images are unreadable ({fraction:.1%} > max_bad_fraction={hp.max_bad_fraction}), "
            f"e.g. {sorted(bad_paths)[:3]}"
        )
    kept = [[s for s in index.samples if str(s[0]) not in bad_paths] for index in indices]
    for index, samples in zip(indices, kept, strict=True):
        if not samples:
            raise UserError(f"channel '{index.split}' has no readable images")
        present = {label for _, label in samples}
        if len(present) != len(index.classes):
            empty = [c for i, c in enumerate(index.classes) if i not in present]
            raise UserError(f"channel '{index.split}' has classes with no readable image: {empty}")
    return kept, len(bad_paths)


def default_workers(num_cpus: int, processes: int, cuda: bool) -> int:
    """Loader processes per training process, sized to the machine.

    On a GPU the model waits for the input, so every CPU of the process's share decodes (at most 8).
    On CPU the loader and the model share the same cores: one worker overlaps decoding with compute,
    and more only take cores from the model (measured in ``local/bench``: see the README).
    """
    share = max(1, num_cpus // max(1, processes))
    return min(8, share) if cuda else max(1, min(8, share // 4))


def train_sampler(size: int, hp: Hyperparameters, world: World, *, with_seeds: bool) -> ResumableSampler:
    return ResumableSampler(size, seed=hp.seed, shuffle=True, rank=world.rank, world_size=world.size, pad=True, with_seeds=with_seeds)


def make_loader(
    samples,
    transform,
    config: DataConfig,
    hp: Hyperparameters,
    world: World,
    *,
    train: bool,
    workers: int,
    pin: bool,
    images: image_cache.DecodedImages | None = None,
):
    """``images``: the split's decoded-image cache, if any (same items as decoding each file)."""
    dataset = (
        image_cache.CachedImages(images, [label for _, label in samples], transform)
        if images is not None
        else LabelledImages(samples, transform, draft_size=config.resize_size)
    )
    if train:
        sampler = train_sampler(len(dataset), hp, world, with_seeds=True)
    else:
        sampler = ResumableSampler(len(dataset), seed=hp.seed, shuffle=False, rank=world.rank, world_size=world.size, pad=False)
    drop_last = train and len(sampler) > hp.batch_size
    return DataLoader(
        dataset,
        batch_size=hp.batch_size,
        sampler=sampler,
        num_workers=workers,
        collate_fn=collate,
        pin_memory=pin,
        drop_last=drop_last,
        persistent_workers=workers > 0,
    )


def cache_images(
    kept: list[list], config: DataConfig, hp: Hyperparameters, *, feature_cache_on: bool, threads: int, processes: int
) -> list[image_cache.DecodedImages | None]:
    """Decode and resize the train and validation images once, where ``cache_images`` says (see image_cache).

    ``processes``: training processes on this host, each building its own cache."""
    sides = [image_cache.cached_side(config, hp.augment), config.resize_size]
    needed = processes * sum(
        image_cache.estimate_bytes([p for p, _ in samples], side) for samples, side in zip(kept[:2], sides, strict=True)
    )
    plan = image_cache.plan(hp.cache_images, needed, feature_cache=feature_cache_on, epochs_left=hp.epochs)
    log.info(format_line("image_cache", mode=plan.mode, reason=plan.reason, estimated_megabytes=needed / 2**20))
    if plan.mode == "none":
        return [None, None]
    built: list[image_cache.DecodedImages | None] = []
    for split, samples, side in zip(("train", "validation"), kept[:2], sides, strict=True):
        images, seconds = image_cache.timed_build([p for p, _ in samples], config, side, plan.mode, threads)
        image_cache.log_built(split, images, plan.mode, seconds)
        built.append(images)
    return built


def extraction_loader(samples, config: DataConfig, hp: Hyperparameters, world: World, *, workers: int, pin: bool):
    """This rank's shard of a split, in order, each sample with its index (for the feature cache)."""
    dataset = feature_cache.indexed(LabelledImages(samples, eval_transform(config), draft_size=config.resize_size))
    sampler = ResumableSampler(len(samples), seed=hp.seed, shuffle=False, rank=world.rank, world_size=world.size, pad=False)
    loader = DataLoader(
        dataset, batch_size=hp.batch_size, sampler=sampler, num_workers=workers, collate_fn=feature_cache.collate_indexed, pin_memory=pin
    )
    return loader, list(sampler)


def feature_loaders(core: nn.Module, kept: list[list], config: DataConfig, hp: Hyperparameters, world: World, **run) -> tuple:
    """Run the frozen backbone once over train and validation; batches of their features, same order as the image loaders."""
    classifier = classifier_of(core)
    shards = []
    for split, samples in (("train", kept[0]), ("validation", kept[1])):
        loader, positions = extraction_loader(samples, config, hp, world, workers=run["workers"], pin=run["pin"])
        labels = [label for _, label in samples]
        started = time.perf_counter()
        shard = feature_cache.extract(core, classifier, loader, labels, positions, run["device"], run["precision"], run["should_stop"])
        seconds = time.perf_counter() - started
        feature_cache.log_extracted(split, shard, seconds)
        shards.append(shard)
    train_features = feature_cache.gather_split(shards[0], len(kept[0]), world)
    sampler = train_sampler(len(kept[0]), hp, world, with_seeds=False)
    train = feature_cache.FeatureBatches(train_features, sampler, hp.batch_size, drop_last=len(sampler) > hp.batch_size)
    valid = feature_cache.FeatureBatches(shards[1], SequentialSampler(range(len(shards[1]))), hp.batch_size, drop_last=False)
    return train, valid


# --- model -----------------------------------------------------------------------------------


def warm_start(channel: Path, model: nn.Module, model_name: str, classes: list[str], workdir: Path) -> str:
    """Load a previous model artifact (folder or model.tar.gz) from the ``model`` channel."""
    tarballs = sorted(channel.glob("*.tar.gz"))
    folder = channel
    if tarballs:
        folder = workdir / "warm_start"
        with tarfile.open(tarballs[0]) as archive:
            archive.extractall(folder, filter="data")
    if not (folder / params.MODEL_CARD_FILE).exists():
        raise UserError(f"channel '{params.MODEL_CHANNEL}' holds no {params.MODEL_CARD_FILE} (a model artifact of this tool)")
    card = read_card(folder)
    if card.architecture != model_name:
        raise UserError(f"warm-start artifact is a {card.architecture}, the job trains {model_name}")
    weights = folder / card.weights_file
    if sha256_of(weights) != card.weights_sha256:
        raise UserError(f"warm-start weights {weights.name} do not match the sha256 in their model card")
    state = read_state_dict(weights)
    if card.classes == classes:
        model.load_state_dict(state)
    else:
        load_backbone_weights(model, state, f"{params.MODEL_CHANNEL} channel")
    log.info("event=warm_start classes_match=%s", card.classes == classes)
    return card.weights_sha256


def lr_lambda(hp: Hyperparameters, steps_per_epoch: int):
    total = max(1, hp.epochs * steps_per_epoch)
    warmup = int(hp.warmup_epochs * steps_per_epoch)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if hp.scheduler == "cosine":
            progress = (step - warmup) / max(1, total - warmup)
            return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
        if hp.scheduler == "step":
            return hp.gamma ** ((step // steps_per_epoch) // hp.step_size)
        return 1.0

    return factor


def make_optimizer(model: nn.Module, hp: Hyperparameters) -> torch.optim.Optimizer:
    groups = parameter_groups(model, hp.lr, hp.backbone_lr_mult, hp.weight_decay)
    if not groups:
        raise UserError("no trainable parameters: check the freeze hyperparameter")
    for group in groups:
        log.info(
            format_line("param_group", name=group["name"], lr=group["lr"], weight_decay=group["weight_decay"], tensors=len(group["params"]))
        )
    if hp.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=hp.lr, momentum=hp.momentum, nesterov=hp.momentum > 0)
    return torch.optim.AdamW(groups, lr=hp.lr)


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    elif torch.cuda.is_available():
        torch.backends.cudnn.benchmark = True


def _read_best(directory: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]] | None:
    path = directory / BEST_WEIGHTS_FILE
    if not path.exists():
        return None
    try:
        with safe_open(str(path), "pt") as handle:
            meta = handle.metadata() or {}
        return read_state_dict(path), meta
    except (UserError, OSError, RuntimeError):
        return None


# --- the job ---------------------------------------------------------------------------------


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
        return _run(env, hp, world, device, started)
    finally:
        shutdown(world)


def _run(env: TrainingEnvironment, hp: Hyperparameters, world: World, device: torch.device, started: float) -> dict[str, float]:
    workers = hp.num_workers if hp.num_workers is not None else default_workers(env.num_cpus, world.local_size, device.type == "cuda")
    train_index, valid_index, test_index = index_data(env)
    classes = list(train_index.classes)
    indices = [i for i in (train_index, valid_index, test_index) if i is not None]
    kept, bad_images = drop_unreadable(indices, hp, world, workers=max(2, workers))
    log.info(
        format_line(
            "data",
            classes=len(classes),
            train=len(kept[0]),
            valid=len(kept[1]),
            test=len(kept[2]) if test_index else 0,
            ignored_files=sum(len(i.ignored) for i in indices),
        )
    )

    # model
    warm_channel = env.channels.get(params.MODEL_CHANNEL)
    workdir = Path(tempfile.mkdtemp(prefix="train-"))
    if warm_channel is not None:
        model = build_architecture(hp.model)
        replace_head(model, len(classes))
        data_config = data_config_for(hp.model, model, hp.image_size)
        warm_sha = warm_start(warm_channel, model, hp.model, classes, workdir)
        pretrained_info: dict[str, str] | None = {"source": "warm_start", "sha256": warm_sha}
    else:
        built = create_model(
            hp.model,
            len(classes),
            pretrained=hp.pretrained,
            image_size=hp.image_size,
            pretrained_channel=env.channels.get(params.PRETRAINED_CHANNEL),
        )
        model, data_config = built.model, built.data_config
        pretrained_info = built.weights.fingerprint() if built.weights else None
    shutil.rmtree(workdir, ignore_errors=True)
    apply_freeze(model, hp.trainable_stages)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    log.info(
        format_line(
            "model",
            name=hp.model,
            freeze=hp.freeze,
            parameters=sum(p.numel() for p in model.parameters()),
            trainable=trainable,
            input_size=data_config.input_size,
        )
    )

    probe = remembered(
        lambda: measure_cpu_bf16(model, data_config.input_size, len(classes), hp.channels_last, min(hp.batch_size, 8)),
        env.checkpoint_dir / AMP_MEASUREMENT_FILE,
        f"{hp.model}@{data_config.input_size}",
    )
    dtype, needs_scaler = choose_amp(hp.amp, device, probe=probe)
    precision = Precision(dtype, torch.amp.GradScaler("cuda") if needs_scaler else None, hp.channels_last)
    model.to(device)
    if hp.channels_last:
        model.to(memory_format=torch.channels_last)
    core = model
    loss_fn = nn.CrossEntropyLoss(label_smoothing=hp.label_smoothing)
    hook = create_hook(env.debug_hook_config, core, loss_fn)
    decision = feature_cache.decide(
        hp, core, classifier_of(core), input_size=data_config.input_size, device=device, debugger=hook is not None
    )
    decision.log(hp)
    if hp.compile:
        # Inductor builds C++ kernels on CPU and Triton launchers (with a C compiler) on GPU;
        # the image ships without compilers, so say so instead of failing deep inside torch.
        compiler = os.environ.get("CXX", "g++") if device.type == "cpu" else os.environ.get("CC", "gcc")
        if not shutil.which(compiler):
            raise UserError(f"hyperparameter compile=true needs a compiler ({compiler}) and none is installed; use compile=false")
        model = torch.compile(model)  # type: ignore[assignment]
    device_ids = [device.index] if device.type == "cuda" else None
    if world.distributed and not decision.enabled:
        model = nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
    # what the epochs run: the full model, or the classifier alone on cached features
    train_model, train_precision = model, precision
    if decision.enabled:
        head = feature_cache.FeatureHead(classifier_of(core), feature_cache.head_dropout(core, classifier_of(core)))
        train_model = nn.parallel.DistributedDataParallel(head, device_ids=device_ids) if world.distributed else head
        train_precision = Precision(precision.dtype, precision.scaler, channels_last=False)

    def set_train_mode() -> None:
        train_model.train()
        freeze_frozen_norms(core)
        if hook:
            hook.train()

    pin = device.type == "cuda"
    cached = cache_images(
        kept,
        data_config,
        hp,
        feature_cache_on=decision.enabled,
        threads=max(2, env.num_cpus // world.local_size),
        processes=world.local_size,
    )
    train_loader = make_loader(
        kept[0], train_transform(data_config, hp.augment), data_config, hp, world, train=True, workers=workers, pin=pin, images=cached[0]
    )
    valid_loader = make_loader(
        kept[1], eval_transform(data_config), data_config, hp, world, train=False, workers=workers, pin=pin, images=cached[1]
    )
    steps_per_epoch = max(1, len(train_loader))
    optimizer = make_optimizer(core, hp)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(hp, steps_per_epoch))

    stop = StopFlag()
    stop.install()

    # resume
    history: list[dict] = []
    best = {"valid_acc": -1.0, "epoch": 0}
    start_epoch = start_step = 0
    stale_epochs = 0
    best_state: dict[str, torch.Tensor] | None = None
    hp_values = hp.model_dump()
    run_id = run_fingerprint(classes, hp_values)
    resumed = load_latest(env.checkpoint_dir, lambda state: foreign_reason(state, classes, hp_values), world.is_main)
    if resumed is not None:
        state, path = resumed
        core.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["lr_scheduler"])
        if precision.scaler is not None and state.get("scaler"):
            precision.scaler.load_state_dict(state["scaler"])
        start_epoch, start_step = int(state["epoch"]), int(state["step"])
        history, best, stale_epochs = list(state["history"]), dict(state["best"]), int(state["stale_epochs"])
        bad_images = max(bad_images, int(state.get("bad_images", 0)))
        stored = _read_best(env.checkpoint_dir)
        if stored is not None and stored[1].get("epoch") == str(best["epoch"]) and stored[1].get("run") == run_id:
            # not one a failed write left stale, nor another run's
            best_state = stored[0]
        log.info(format_line("resumed", checkpoint=path.name, epoch=start_epoch, step=start_step))
    if decision.enabled:  # after resuming: the features of the backbone the checkpoint holds
        train_loader, valid_loader = feature_loaders(
            core,
            kept,
            data_config,
            hp,
            world,
            workers=workers,
            pin=pin,
            device=device,
            precision=precision,
            should_stop=lambda: stop.requested,
        )

    def checkpoint_state(epoch: int, step: int) -> dict:
        return {
            "model": core.state_dict(),
            "optimizer": optimizer.state_dict(),
            "lr_scheduler": scheduler.state_dict(),
            "scaler": precision.scaler.state_dict() if precision.scaler else None,
            "epoch": epoch,
            "step": step,
            "history": history,
            "best": best,
            "stale_epochs": stale_epochs,
            "bad_images": bad_images,
            "classes": classes,
            "model_name": hp.model,
            "hyperparameters": hp_values,
        }

    checks = TrainingChecks() if hp.checks else None
    writer = None
    if world.is_main:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(env.tensorboard_dir))
    output_dir = env.output_data_dir
    output_dir.mkdir(parents=True, exist_ok=True)

    def write_epoch_checkpoint(state: dict) -> None:
        if saved := write_or_warn("checkpoint", save_checkpoint, state, env.checkpoint_dir, state["epoch"], 0):
            log.info(format_line("checkpoint", path=saved.name, reason="epoch", epoch=state["epoch"], step=0))

    stopped_early = False
    with (
        BackgroundWriter() as writer_thread,
        SystemSampler() as sampler,
        trace_window(
            hp.profile and world.is_main,
            hp.profile_start_step,
            hp.profile_steps,
            env.tensorboard_dir / params.PROFILER_DIR,
            output_dir / params.PROFILER_DIR / "top_operators.txt",
        ) as profiler,
    ):
        for epoch in range(start_epoch, hp.epochs):
            skip = start_step * hp.batch_size if epoch == start_epoch else 0
            train_loader.sampler.set_epoch(epoch, skip)
            step0 = start_step if epoch == start_epoch else 0
            # dropout and the like draw from the main RNG: a fixed state per (seed, rank, epoch, step)
            # makes a job resumed from an epoch checkpoint draw exactly what an uninterrupted one does
            torch.manual_seed(sample_seed(hp.seed + world.rank, epoch, step0))

            def on_interrupt(step: int, epoch: int = epoch) -> None:
                writer_thread.flush()
                if world.is_main:
                    state = checkpoint_state(epoch, step)
                    if saved := write_or_warn("checkpoint", save_checkpoint, state, env.checkpoint_dir, epoch, step):
                        log.info(format_line("checkpoint", path=saved.name, reason="signal", epoch=epoch, step=step))

            result = train_one_epoch(
                model=train_model,
                loader=train_loader,
                optimizer=optimizer,
                scheduler=scheduler,
                loss_fn=loss_fn,
                device=device,
                precision=train_precision,
                epoch=epoch,
                start_step=step0,
                clip_grad_norm=hp.clip_grad_norm,
                checks=checks,
                world=world,
                stop=stop,
                on_interrupt=on_interrupt,
                log_interval=hp.log_interval,
                profiler=profiler if epoch == start_epoch else None,
                set_train_mode=set_train_mode,
            )
            if hook:
                hook.eval()
            valid = evaluate(train_model, valid_loader, device, train_precision, world)
            bad_images += result.bad_images
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
            history.append(entry)
            if writer is not None:
                log.info(
                    format_line(
                        "epoch", **{k: v for k, v in entry.items() if k != "data_wait_fraction"}, data_wait=entry["data_wait_fraction"]
                    )
                )
                for key in ("train_loss", "train_acc", "valid_loss", "valid_acc", "lr", "images_per_sec"):
                    writer.add_scalar(key, entry[key], epoch + 1)
                writer.flush()
            if checks is not None:
                checks.on_epoch(epoch + 1, result.loss, result.accuracy, valid.loss, valid.accuracy)
            if valid.accuracy > best["valid_acc"] + 1e-9:
                best = {"valid_acc": valid.accuracy, "epoch": epoch + 1}
                best_state = {k: v.detach().to("cpu").clone() for k, v in core.state_dict().items()}
                stale_epochs = 0
                if world.is_main:
                    meta = {**{k: str(v) for k, v in best.items()}, "run": run_id}
                    path = env.checkpoint_dir / BEST_WEIGHTS_FILE
                    writer_thread.submit(
                        "best", f"epoch_{epoch + 1}", partial(write_or_warn, BEST_WEIGHTS_FILE, save_weights, best_state, path, meta)
                    )
            else:
                stale_epochs += 1
            if world.is_main:
                writer_thread.submit(
                    "checkpoint", f"epoch_{epoch + 1}", partial(write_epoch_checkpoint, snapshot(checkpoint_state(epoch + 1, 0)))
                )
            barrier(world)
            if bad_images / max(sum(len(k) for k in kept), 1) > hp.max_bad_fraction:
                raise UserError(f"{bad_images} images became unreadable during training (> max_bad_fraction={hp.max_bad_fraction})")
            if hp.early_stopping_patience and stale_epochs >= hp.early_stopping_patience:
                log.info(format_line("early_stop", epoch=epoch + 1, best_epoch=best["epoch"], patience=hp.early_stopping_patience))
                stopped_early = True
                break
        system = sampler.summary()

    if hook:
        hook.close()
    # the model kept is the best on validation
    if best_state is not None:
        core.load_state_dict(best_state)
    final = {"best_valid_acc": max(best["valid_acc"], 0.0), "bad_images": bad_images, "epochs_completed": len(history)}
    eval_split = "validation"
    evaluation = None
    if test_index is not None:
        test_loader = make_loader(kept[2], eval_transform(data_config), data_config, hp, world, train=False, workers=workers, pin=pin)
        evaluation = evaluate(model, test_loader, device, precision, world, keep_predictions=True)
        final.update(test_loss=evaluation.loss, test_acc=evaluation.accuracy, test_top5_acc=evaluation.top5)
        eval_split = "test"
    else:
        evaluation = evaluate(train_model, valid_loader, device, train_precision, world, keep_predictions=True)
    final["train_seconds"] = time.perf_counter() - started

    if world.is_main:
        log.info(format_line("final", **final))
        _write_outputs(
            env,
            hp,
            classes,
            data_config,
            core,
            final,
            history,
            evaluation,
            eval_split,
            checks,
            system,
            pretrained_info,
            stopped_early,
            writer,
        )
    barrier(world)
    return final


def _write_outputs(
    env, hp, classes, data_config, core, final, history, evaluation, eval_split, checks, system, pretrained_info, stopped_early, writer
) -> None:
    output_dir = env.output_data_dir
    labels = np.asarray(evaluation.labels, dtype=np.int64)
    preds = np.asarray(evaluation.preds, dtype=np.int64)
    matrix = reports.confusion_matrix(labels, preds, len(classes))
    reports.write_per_class(reports.per_class_rows(matrix, classes), output_dir / params.PER_CLASS_FILE)
    reports.plot_confusion(matrix, classes, output_dir / params.CONFUSION_MATRIX_FILE, f"{eval_split} confusion matrix")
    if history:
        reports.plot_learning_curves(history, output_dir / params.LEARNING_CURVES_FILE)
    metrics = {"final": final, "history": history, "eval_split": eval_split, "classes": classes}
    (output_dir / params.METRICS_FILE).write_text(json.dumps(metrics, indent=2) + "\n")
    for key in ("test_acc", "test_loss", "best_valid_acc"):
        if key in final:
            writer.add_scalar(f"final/{key}", final[key], len(history))
    writer.close()
    card = write_artifact(
        env.model_dir,
        core.state_dict(),
        architecture=hp.model,
        num_classes=len(classes),
        classes=classes,
        preprocessing=data_config.as_dict(),
        metrics={k: float(v) for k, v in final.items()},
        hyperparameters=hp.model_dump(),
        pretrained=pretrained_info,
        job_name=env.job_name,
    )
    report = {
        "job_name": env.job_name,
        "status": "early_stopped" if stopped_early else "completed",
        "model": hp.model,
        "num_classes": len(classes),
        "hyperparameters": hp.model_dump(),
        "final_metrics": final,
        "history": history,
        "findings": checks.as_dicts() if checks else [],
        "checks_enabled": checks is not None,
        "system": system,
        "weights_sha256": card.weights_sha256,
        "profiler_trace": str(env.tensorboard_dir / params.PROFILER_DIR) if hp.profile else None,
    }
    reports.write_report(report, output_dir)
    log.info(format_line("artifact", model_dir=str(env.model_dir), weights_sha256=card.weights_sha256[:12]))
