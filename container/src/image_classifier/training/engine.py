"""One training epoch and one evaluation pass: the inner loops, nothing else."""

from __future__ import annotations

import logging
import signal
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field

import torch
from torch import nn

from image_classifier.metrics import format_line
from image_classifier.training.diagnostics import TrainingChecks
from image_classifier.training.distributed import World, all_reduce_sum, any_rank, gather_lists
from image_classifier.training.profiling import StepTimer

log = logging.getLogger(__name__)


class StopRequested(Exception):
    """SIGTERM arrived (Spot interruption, ``docker stop``) after ``step`` steps of the epoch.

    The loop that catches it writes the checkpoint of that position, then lets it end the job.
    """

    def __init__(self, signal_name: str, step: int | None = None):
        super().__init__(signal_name)
        self.step = step


@dataclass
class StopFlag:
    """Set by SIGTERM/SIGINT; the loop checks it between steps so a checkpoint can be written."""

    requested: bool = False
    signal_name: str = ""

    def install(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._handle)

    def _handle(self, signum, _frame) -> None:
        self.requested, self.signal_name = True, signal.Signals(signum).name


@dataclass
class Precision:
    dtype: torch.dtype | None
    scaler: torch.amp.GradScaler | None
    channels_last: bool

    def autocast(self, device: torch.device):
        return torch.autocast(device.type, dtype=self.dtype) if self.dtype else nullcontext()

    def to_device(self, images: torch.Tensor, device: torch.device) -> torch.Tensor:
        images = images.to(device, non_blocking=True)
        return images.contiguous(memory_format=torch.channels_last) if self.channels_last else images


@dataclass
class EpochResult:
    loss: float
    accuracy: float
    images: int
    seconds: float
    data_wait_fraction: float
    bad_images: int
    lr: float


@dataclass
class EvalResult:
    loss: float
    accuracy: float
    top5: float
    labels: list[int] = field(default_factory=list)
    preds: list[int] = field(default_factory=list)
    logits: torch.Tensor | None = None  # fp32, every sample (with keep_predictions), for calibration


def train_one_epoch(
    *,
    model: nn.Module,
    loader,
    optimizer: torch.optim.Optimizer,
    scheduler,
    loss_fn: nn.Module,
    device: torch.device,
    precision: Precision,
    epoch: int,
    start_step: int,
    clip_grad_norm: float,
    checks: TrainingChecks | None,
    world: World,
    stop: StopFlag,
    log_interval: int,
    profiler=None,
) -> EpochResult:
    """One pass over ``loader`` from ``start_step``; the caller has put the model in training mode."""
    timer = StepTimer(device)
    total_loss = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    seen = bad = 0
    start = time.perf_counter()
    trainable = [p for p in model.parameters() if p.requires_grad]
    measure_norm = clip_grad_norm > 0 or checks is not None
    iterator = loader
    if sys.stdout.isatty() and world.is_main:
        from tqdm import tqdm

        iterator = tqdm(loader, desc=f"epoch {epoch + 1}", leave=False)
    step = start_step
    for images, labels, n_bad in iterator:
        timer.data_ready()
        bad += n_bad
        if labels.numel() == 0:
            continue
        images = precision.to_device(images, device)
        labels = labels.to(device, non_blocking=True)
        with precision.autocast(device):
            logits = model(images)
            loss = loss_fn(logits, labels)
        optimizer.zero_grad(set_to_none=True)
        if precision.scaler is not None:
            precision.scaler.scale(loss).backward()
            precision.scaler.unscale_(optimizer)
        else:
            loss.backward()
        grad_norm = None
        if measure_norm:
            limit = clip_grad_norm if clip_grad_norm > 0 else float("inf")
            grad_norm = float(torch.nn.utils.clip_grad_norm_(trainable, limit))
        if precision.scaler is not None:
            precision.scaler.step(optimizer)
            precision.scaler.update()
        else:
            optimizer.step()
        scheduler.step()
        step += 1
        batch = labels.numel()
        loss_value = loss.detach()
        total_loss += loss_value.double() * batch
        correct += (logits.detach().argmax(1) == labels).sum()
        seen += batch
        timer.step_done()
        if profiler is not None:
            profiler.step()
        if checks is not None:
            checks.on_step(epoch, float(loss_value), grad_norm)
        if step % log_interval == 0 and world.is_main:
            elapsed = time.perf_counter() - start
            log.info(
                format_line(
                    "step",
                    epoch=epoch + 1,
                    step=step,
                    loss=float(loss_value),
                    lr=optimizer.param_groups[0]["lr"],
                    throughput=seen * world.size / elapsed,
                )
            )
        if any_rank(stop.requested, world, device) if world.distributed else stop.requested:
            raise StopRequested(stop.signal_name or "SIGTERM", step)
    seconds = time.perf_counter() - start
    loss_sum, n_correct, n_seen, n_bad_all = all_reduce_sum([float(total_loss), float(correct), float(seen), float(bad)], world, device)
    return EpochResult(
        loss=loss_sum / max(n_seen, 1),
        accuracy=n_correct / max(n_seen, 1),
        images=int(n_seen),
        seconds=seconds,
        data_wait_fraction=timer.data_fraction,
        bad_images=int(n_bad_all),
        lr=optimizer.param_groups[0]["lr"],
    )


@torch.inference_mode()
def evaluate(
    model: nn.Module, loader, device: torch.device, precision: Precision, world: World, keep_predictions: bool = False
) -> EvalResult:
    """Loss and accuracy over the whole split (every sample exactly once across ranks)."""
    model.eval()
    loss_fn = nn.CrossEntropyLoss(reduction="sum")
    total_loss = correct = top5 = seen = 0.0
    labels_all: list[int] = []
    preds_all: list[int] = []
    logits_all: list[list[float]] = []
    for images, labels, _ in loader:
        if labels.numel() == 0:
            continue
        images = precision.to_device(images, device)
        labels = labels.to(device, non_blocking=True)
        with precision.autocast(device):
            logits = model(images)
        logits = logits.float()
        total_loss += float(loss_fn(logits, labels))
        k = min(5, logits.shape[1])
        topk = logits.topk(k, dim=1).indices
        correct += float((topk[:, 0] == labels).sum())
        top5 += float((topk == labels[:, None]).any(dim=1).sum())
        seen += labels.numel()
        if keep_predictions:
            labels_all += labels.tolist()
            preds_all += topk[:, 0].tolist()
            logits_all += logits.cpu().tolist()
    total_loss, correct, top5, seen = all_reduce_sum([total_loss, correct, top5, seen], world, device)
    kept_logits = None
    if keep_predictions:
        labels_all, preds_all, logits_all = (gather_lists(values, world) for values in (labels_all, preds_all, logits_all))
        kept_logits = torch.tensor(logits_all, dtype=torch.float32) if logits_all else None
    n = max(seen, 1)
    return EvalResult(total_loss / n, correct / n, top5 / n, labels_all, preds_all, kept_logits)
