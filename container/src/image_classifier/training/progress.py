"""What outlives an epoch, in one object that also builds and restores the checkpoint dict.

The history of epoch metrics, the best validation accuracy so far (and its weights), the epochs
without gain (early stopping), the unreadable images met, and the position to resume from. A
checkpoint is torchvision's single dict: this object's fields next to the model, optimizer,
schedule and scaler states, plus what identifies the run (classes, model, hyperparameters), so
that ``checkpoints.foreign_reason`` can tell this run's checkpoints from another's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

IMPROVEMENT = 1e-9  # a gain in validation accuracy smaller than this is no gain


@dataclass
class Stateful:
    """The objects whose state a checkpoint carries besides the progress itself."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler | None


@dataclass
class Progress:
    history: list[dict[str, float]] = field(default_factory=list)
    best: dict[str, float] = field(default_factory=lambda: {"valid_acc": -1.0, "epoch": 0})
    stale_epochs: int = 0
    bad_images: int = 0
    epoch: int = 0  # the epoch to run next (0-based)
    step: int = 0  # optimizer steps already done in it
    best_state: dict[str, torch.Tensor] | None = None  # weights of the best epoch, on the CPU
    early_stopped: bool = False

    def record(self, entry: dict[str, float], model: nn.Module) -> bool:
        """Append one finished epoch's metrics; keep the weights if validation improved. True if it did."""
        self.history.append(entry)
        self.epoch, self.step = int(entry["epoch"]), 0
        if entry["valid_acc"] > self.best["valid_acc"] + IMPROVEMENT:
            self.best = {"valid_acc": entry["valid_acc"], "epoch": entry["epoch"]}
            self.best_state = {k: v.detach().to("cpu").clone() for k, v in model.state_dict().items()}
            self.stale_epochs = 0
            return True
        self.stale_epochs += 1
        return False

    def patience_spent(self, patience: int) -> bool:
        return bool(patience) and self.stale_epochs >= patience

    @property
    def best_valid_acc(self) -> float:
        return max(self.best["valid_acc"], 0.0)

    def checkpoint(self, parts: Stateful, *, epoch: int, step: int, classes: list[str], hyperparameters: dict[str, Any]) -> dict:
        """The one checkpoint dict of position (``epoch``, ``step``)."""
        return {
            "model": parts.model.state_dict(),
            "optimizer": parts.optimizer.state_dict(),
            "lr_scheduler": parts.scheduler.state_dict(),
            "scaler": parts.scaler.state_dict() if parts.scaler else None,
            "epoch": epoch,
            "step": step,
            "history": self.history,
            "best": self.best,
            "stale_epochs": self.stale_epochs,
            "bad_images": self.bad_images,
            "classes": classes,
            "model_name": hyperparameters["model"],
            "hyperparameters": hyperparameters,
        }

    @classmethod
    def restore(cls, state: dict, parts: Stateful, *, bad_images: int) -> Progress:
        """Load ``state`` into ``parts``; the progress it recorded (``bad_images``: this start's pre-flight count)."""
        parts.model.load_state_dict(state["model"])
        parts.optimizer.load_state_dict(state["optimizer"])
        parts.scheduler.load_state_dict(state["lr_scheduler"])
        if parts.scaler is not None and state.get("scaler"):
            parts.scaler.load_state_dict(state["scaler"])
        return cls(
            history=list(state["history"]),
            best=dict(state["best"]),
            stale_epochs=int(state["stale_epochs"]),
            bad_images=max(bad_images, int(state.get("bad_images", 0))),
            epoch=int(state["epoch"]),
            step=int(state["step"]),
        )
