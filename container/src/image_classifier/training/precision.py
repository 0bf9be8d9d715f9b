"""Pick mixed precision by measurement, not by assumption.

On GPUs bf16 (or fp16 with a scaler) is a clear win. On CPUs it depends on the chip: on these
2-core machines a bf16 matmul runs at half the fp32 rate, so ``amp=auto`` times both on the
device and keeps bf16 only where it is really faster.
"""

from __future__ import annotations

import logging
import time

import torch

from image_classifier.errors import UserError

log = logging.getLogger(__name__)


def _matmul_rate(dtype: torch.dtype, size: int = 512, repeats: int = 8) -> float:
    a = torch.randn(size, size, dtype=dtype)
    b = torch.randn(size, size, dtype=dtype)
    torch.mm(a, b)
    start = time.perf_counter()
    for _ in range(repeats):
        torch.mm(a, b)
    return 2 * size**3 * repeats / (time.perf_counter() - start) / 1e9


def choose_amp(amp: str, device: torch.device) -> tuple[torch.dtype | None, bool]:
    """Return (autocast dtype or None, whether a GradScaler is needed)."""
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
    fp32, bf16 = _matmul_rate(torch.float32), _matmul_rate(torch.bfloat16)
    chosen = bf16 > 1.2 * fp32
    log.info("event=amp_decision device=cpu fp32_gflops=%.1f bf16_gflops=%.1f chosen=%s", fp32, bf16, "bf16" if chosen else "fp32")
    return (torch.bfloat16 if chosen else None), False
