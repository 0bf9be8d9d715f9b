"""Everything a training step does besides learning, in one place, synchronising the host rarely.

The loop (``engine.train_one_epoch``) only steps; after each step it hands the watch what it has:
the loss and logits (still on the device), the labels, the gradient norm (a device tensor, or None),
the unreadable images of the batch. The watch keeps the epoch's totals on the device, times the
loader, advances the profiler, and every ``sync_every`` steps does what needs the host: reads the
losses and norms of those steps for the in-process checks, agrees across ranks on a stop (SIGTERM)
and on the unreadable images met so far, and stops an epoch that has already lost more images than
``max_bad_fraction`` allows (hours early on a million images). Log lines read the device only on
their own steps.

``sync_every`` starts at 1 and, after ``CALIBRATION_STEPS``, becomes the number of steps that fit in
``SYNC_SECONDS`` (the slowest rank's mean step, agreed by all ranks so their collectives match):
one host synchronisation every ~2 s instead of several per step, while SIGTERM → checkpoint → exit
stays far inside SageMaker's 30 s before SIGKILL.
"""

from __future__ import annotations

import logging
import math
import signal
import time
from dataclasses import dataclass, field

import torch

from image_classifier.data.readability import too_many_lost
from image_classifier.metrics import format_line
from image_classifier.training.diagnostics import TrainingChecks
from image_classifier.training.distributed import World, all_reduce_max, all_reduce_sum

log = logging.getLogger(__name__)
CALIBRATION_STEPS = 5
SYNC_SECONDS = 2.0
MAX_SYNC_EVERY = 200


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
    previous: dict = field(default_factory=dict)

    def install(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            self.previous[sig] = signal.signal(sig, self._handle)

    def restore(self) -> None:
        """The handlers from before ``install``: ``main`` is importable, and its caller's SIGTERM must work after it
        (a process pool could not stop a worker that had run ``main``)."""
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
        self.previous.clear()

    def _handle(self, signum, _frame) -> None:
        self.requested, self.signal_name = True, signal.Signals(signum).name


@dataclass
class EpochResult:
    loss: float
    accuracy: float
    images: int
    seconds: float
    data_wait_fraction: float
    bad_images: int
    lr: float


class EpochWatch:
    """The side jobs of one epoch's steps (see the module's docstring)."""

    def __init__(
        self,
        *,
        epoch: int,
        start_step: int,
        device: torch.device,
        world: World,
        stop: StopFlag,
        optimizer: torch.optim.Optimizer,
        log_interval: int,
        epoch_images: int,
        max_bad_fraction: float,
        checks: TrainingChecks | None = None,
        profiler=None,
    ):
        self.epoch, self.step, self.device, self.world, self.stop = epoch, start_step, device, world, stop
        self.optimizer, self.log_interval, self.checks, self.profiler = optimizer, log_interval, checks, profiler
        self.epoch_images, self.max_bad_fraction = epoch_images, max_bad_fraction
        self.total_loss = torch.zeros((), dtype=torch.float64, device=device)
        self.correct = torch.zeros((), dtype=torch.int64, device=device)
        self.seen = self.bad = self.synced_bad = 0
        self.sync_every, self.steps_since_sync = 1, 0
        self.pending_losses: list[torch.Tensor] = []
        self.pending_norms: list[torch.Tensor | None] = []
        self.data_seconds = self.compute_seconds = 0.0
        self.first_step = start_step
        self.started = self._mark = time.perf_counter()

    @property
    def wants_grad_norm(self) -> bool:
        return self.checks is not None

    def data_ready(self, n_bad: int) -> None:
        now = time.perf_counter()
        self.data_seconds += now - self._mark
        self._mark = now
        self.bad += n_bad

    def step_done(self, loss: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor, grad_norm: torch.Tensor | None) -> None:
        self.step += 1
        batch = labels.numel()
        self.total_loss += loss.double() * batch
        self.correct += (logits.argmax(1) == labels).sum()
        self.seen += batch
        if self.checks is not None:
            self.pending_losses.append(loss.float())
            self.pending_norms.append(grad_norm)
        if self.profiler is not None:
            self.profiler.step()
        if self.step % self.log_interval == 0 and self.world.is_main:
            elapsed = time.perf_counter() - self.started
            lr = self.optimizer.param_groups[0]["lr"]
            log.info(
                format_line(
                    "step", epoch=self.epoch + 1, step=self.step, loss=float(loss), lr=lr, throughput=self.seen * self.world.size / elapsed
                )
            )
        self.steps_since_sync += 1
        # one process alone stops at once (its flag and its count are its own); ranks stop together at the next sync
        alone_and_done = not self.world.distributed and (self.stop.requested or self.bad > self.max_bad_fraction * self.epoch_images)
        if self.steps_since_sync >= self.sync_every or alone_and_done:
            self.sync()
        now = time.perf_counter()
        self.compute_seconds += now - self._mark
        self._mark = now

    def sync(self) -> None:
        """The host's part: checks on the steps since the last sync, the stop and the bad-image bound (all ranks agree)."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)  # the compute time of these steps is now real
        self._feed_checks()
        stop = 1.0 if self.stop.requested else 0.0
        if self.world.distributed:
            stop, new_bad = all_reduce_sum([stop, float(self.bad - self.synced_bad)], self.world, self.device)
            self.synced_bad += int(new_bad)  # every rank's images met since the last sync
        else:
            self.synced_bad = self.bad
        if self.sync_every == 1 and self.step >= CALIBRATION_STEPS:  # the same step on every rank
            # the slowest rank's mean step decides how rarely every rank synchronises (one value, so collectives match)
            mean = (time.perf_counter() - self.started) / max(1, self.step - self.first_step)
            slowest = all_reduce_max(mean, self.world, self.device)
            self.sync_every = max(1, min(MAX_SYNC_EVERY, int(SYNC_SECONDS / max(slowest, 1e-6))))
            log.info(format_line("sync_interval", steps=self.sync_every, step_seconds=slowest))
        self.steps_since_sync = 0
        if error := self._too_many_lost():
            raise error
        if stop:
            raise StopRequested(self.stop.signal_name or "SIGTERM", self.step)

    def _feed_checks(self) -> None:
        if self.checks is None or not self.pending_losses:
            return
        losses = torch.stack(self.pending_losses).tolist()
        norms = [None if n is None else float(n) for n in self.pending_norms]
        for loss_value, norm in zip(losses, norms, strict=True):
            self.checks.on_step(self.epoch, loss_value, norm)
        self.pending_losses, self.pending_norms = [], []

    def _too_many_lost(self):
        """Past the bound already, with images of the epoch still to come: the job stops now, with the reason."""
        if self.synced_bad and math.floor(self.max_bad_fraction * self.epoch_images) < self.synced_bad:
            return too_many_lost(self.synced_bad, self.epoch_images, self.max_bad_fraction)
        return None

    def finish(self) -> EpochResult:
        self.sync()
        seconds = time.perf_counter() - self.started
        # every rank's own count: equal steps on every rank is what keeps DDP from hanging
        log.info(format_line("rank_epoch", epoch=self.epoch + 1, rank=self.world.rank, steps=self.step, images=self.seen, bad=self.bad))
        loss_sum, n_correct, n_seen = all_reduce_sum(
            [float(self.total_loss), float(self.correct), float(self.seen)], self.world, self.device
        )
        total = self.data_seconds + self.compute_seconds
        return EpochResult(
            loss=loss_sum / max(n_seen, 1),
            accuracy=n_correct / max(n_seen, 1),
            images=int(n_seen),
            seconds=seconds,
            data_wait_fraction=self.data_seconds / total if total else 0.0,
            bad_images=self.synced_bad,
            lr=self.optimizer.param_groups[0]["lr"],
        )
