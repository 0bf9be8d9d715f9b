"""One training epoch and one evaluation pass: the inner loops, nothing else.

The training loop reads as torchvision's reference loop; what a step does besides learning (totals,
timing, logs, checks, the stop and bad-image checks, the profiler) is the ``EpochWatch``'s
(``epoch_watch.py``), which touches the host only every few steps.
"""

from __future__ import annotations

import logging
import sys
from contextlib import nullcontext
from dataclasses import dataclass, field

import torch
from torch import nn

from image_classifier.training.distributed import World, all_reduce_sum, gather_lists
from image_classifier.training.epoch_watch import EpochResult, EpochWatch, StopFlag, StopRequested

__all__ = ["EpochResult", "EvalResult", "Precision", "StopFlag", "StopRequested", "evaluate", "train_one_epoch"]
log = logging.getLogger(__name__)


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
class EvalResult:
    loss: float
    accuracy: float
    top5: float
    labels: list[int] = field(default_factory=list)
    preds: list[int] = field(default_factory=list)
    logits: torch.Tensor | None = None  # fp32, every sample (with keep_predictions), for calibration
    bad_images: int = 0  # unreadable images met in this pass, every rank
    images: int = 0  # images evaluated, every rank (each exactly once)


def train_one_epoch(
    model: nn.Module,
    loader,
    optimizer: torch.optim.Optimizer,
    scheduler,
    loss_fn: nn.Module,
    device: torch.device,
    precision: Precision,
    clip_grad_norm: float,
    watch: EpochWatch,
) -> EpochResult:
    """One pass over ``loader``; the caller has put the model in training mode."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    iterator = loader
    if sys.stdout.isatty() and watch.world.is_main:
        from tqdm import tqdm

        iterator = tqdm(loader, desc=f"epoch {watch.epoch + 1}", leave=False)
    for images, labels, n_bad in iterator:
        watch.data_ready(n_bad)
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
        if clip_grad_norm > 0 or watch.wants_grad_norm:  # a device tensor: read on the host only at the watch's syncs
            grad_norm = torch.nn.utils.clip_grad_norm_(trainable, clip_grad_norm if clip_grad_norm > 0 else float("inf"))
        if precision.scaler is not None:
            precision.scaler.step(optimizer)
            precision.scaler.update()
        else:
            optimizer.step()
        scheduler.step()
        watch.step_done(loss.detach(), logits.detach(), labels, grad_norm)
    return watch.finish()


@torch.inference_mode()
def evaluate(
    model: nn.Module, loader, device: torch.device, precision: Precision, world: World, keep_predictions: bool = False
) -> EvalResult:
    """Loss and accuracy over the whole split (every sample exactly once across ranks); unreadable images counted."""
    model.eval()
    loss_fn = nn.CrossEntropyLoss(reduction="sum")
    totals = torch.zeros(4, dtype=torch.float64, device=device)  # loss, correct, top-5, seen: read once, at the end
    bad = 0
    labels_all: list[int] = []
    preds_all: list[int] = []
    logits_all: list[list[float]] = []
    for images, labels, n_bad in loader:
        bad += n_bad
        if labels.numel() == 0:
            continue
        images = precision.to_device(images, device)
        labels = labels.to(device, non_blocking=True)
        with precision.autocast(device):
            logits = model(images)
        logits = logits.float()
        k = min(5, logits.shape[1])
        topk = logits.topk(k, dim=1).indices
        totals += torch.stack(
            [
                loss_fn(logits, labels).double(),
                (topk[:, 0] == labels).sum().double(),
                (topk == labels[:, None]).any(dim=1).sum().double(),
                torch.tensor(float(labels.numel()), dtype=torch.float64, device=device),
            ]
        )
        if keep_predictions:
            labels_all += labels.tolist()
            preds_all += topk[:, 0].tolist()
            logits_all += logits.cpu().tolist()
    total_loss, correct, top5, seen, bad_all = all_reduce_sum([*totals.tolist(), float(bad)], world, device)
    kept_logits = None
    if keep_predictions:
        labels_all, preds_all, logits_all = (gather_lists(values, world) for values in (labels_all, preds_all, logits_all))
        kept_logits = torch.tensor(logits_all, dtype=torch.float32) if logits_all else None
    n = max(seen, 1)
    return EvalResult(total_loss / n, correct / n, top5 / n, labels_all, preds_all, kept_logits, int(bad_all), int(seen))
