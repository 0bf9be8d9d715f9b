"""Pick mixed precision by measurement, not by assumption.

On GPUs bf16 (or fp16 with a scaler) is a clear win. On CPUs it depends on the chip and the
network: on these 2-core machines a bf16 matmul runs about twice as fast as fp32, yet a bf16
training step of EfficientNet-Lite0 is slower (106 vs 141 images/s), because depthwise
convolutions and the casts dominate. So ``amp=auto`` on CPU times a few real training steps of
a copy of the model in both modes and keeps bf16 only where it is really faster.

The measurement is remembered in the checkpoint folder (``remembered``): a job restarted after
an interruption trains on in the precision it started with, whatever the machine's load says now.
"""

from __future__ import annotations

import copy
import json
import logging
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

import torch
from torch import nn

from image_classifier.atomic import atomic_target
from image_classifier.errors import UserError

log = logging.getLogger(__name__)
SPEED_UP_REQUIRED = 1.1


def _step_seconds(model: nn.Module, dtype: torch.dtype | None, batch: torch.Tensor, labels: torch.Tensor, repeats: int = 2) -> float:
    loss_fn = nn.CrossEntropyLoss()
    timings = []
    for _ in range(repeats + 1):  # the first one warms up
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=dtype) if dtype else nullcontext():
            loss = loss_fn(model(batch), labels)
        loss.backward()
        model.zero_grad(set_to_none=True)
        timings.append(time.perf_counter() - start)
    return min(timings[1:])


def measure_cpu_bf16(model: nn.Module, input_size: int, num_classes: int, channels_last: bool, batch_size: int = 8) -> tuple[float, float]:
    """Seconds per training step in fp32 and in bf16 autocast, on a throw-away copy of the model."""
    probe = copy.deepcopy(model).train()
    batch = torch.randn(batch_size, 3, input_size, input_size)
    if channels_last:
        probe = probe.to(memory_format=torch.channels_last)
        batch = batch.contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, num_classes, (batch_size,))
    return _step_seconds(probe, None, batch, labels), _step_seconds(probe, torch.bfloat16, batch, labels)


AMP_MEASUREMENT_FILE = "amp-measurement.json"


def remembered(probe: Callable[[], tuple[float, float]], path: Path, key: str) -> Callable[[], tuple[float, float]]:
    """``probe`` measured once per job: the first run writes its timings to ``path``, a restarted
    run (same ``key``: model and input size) reads them back instead of measuring again."""

    def run() -> tuple[float, float]:
        try:
            stored = json.loads(path.read_text())
            if stored["key"] == key:
                return float(stored["fp32"]), float(stored["bf16"])
        except (OSError, ValueError, KeyError, TypeError):
            pass
        fp32, bf16 = probe()
        try:
            with atomic_target(path) as tmp:
                tmp.write_text(json.dumps({"key": key, "fp32": fp32, "bf16": bf16}))
        except OSError:
            pass  # not remembered: a restart measures again
        return fp32, bf16

    return run


def choose_amp(amp: str, device: torch.device, probe=None) -> tuple[torch.dtype | None, bool]:
    """Return (autocast dtype or None, whether a GradScaler is needed).

    ``probe()`` returns (fp32 seconds, bf16 seconds) for one training step; used by ``auto`` on CPU.
    """
    if amp == "off":
        return None, False
    if device.type == "cuda":
        if amp == "fp16" or (amp == "auto" and not torch.cuda.is_bf16_supported()):
            return torch.float16, True
        return torch.bfloat16, False
    if amp == "fp16":
        raise UserError("hyperparameter amp=fp16 needs a GPU; use amp=bf16 or amp=auto on CPU")
    if amp == "bf16":
        return torch.bfloat16, False
    if probe is None:
        return None, False
    fp32, bf16 = probe()
    chosen = fp32 / bf16 >= SPEED_UP_REQUIRED
    log.info(
        "event=amp_decision device=cpu fp32_step_seconds=%.4f bf16_step_seconds=%.4f chosen=%s", fp32, bf16, "bf16" if chosen else "fp32"
    )
    return (torch.bfloat16 if chosen else None), False
