"""The precision and graph a model is served in, decided by a rule from facts read in milliseconds.

Why a rule rather than timing at every start: timing every mode cost 0.6-6.4 s per start on an H200
and 2 s on a 2-core CPU, and on the H200 it chose fp32 on one start and bf16 on the next for the
same model (noise: the two are within a few per cent there). What decides the answer is the kind of
machine and the size of the model, both known before any forward pass:

- precision. A CPU with bf16 units (``avx512_bf16`` or AMX in /proc/cpuinfo): bf16 for models of at
  least ``MIN_GFLOP_FOR_BF16`` per image (ResNet-50: 2x the throughput of fp32 on the project's AMD EPYC,
  ``local/bench/results/graphs.md``); without them bf16 is emulated and slower: fp32. Below the size
  a forward pass is a few ms of a request and fp32 keeps the answers exact. A GPU: fp32, because
  cuDNN runs its convolutions in TF32 (torch's default) and bf16 measured within noise of fp32 on an
  H200 at batch 1 and 16 (docs/performance.md); a GPU before Ampere has no bf16 at all.
  A bf16 choice is confirmed on a probe (cosine of its logits against fp32's, ``fast_paths.agrees``).
- graph. Frozen TorchScript wherever ``torch.jit`` can trace and freeze: 1.1-1.25x eager on the AMD
  EPYC at batch 16, 2-3x eager on an H200. ``torch.export``'s program ran no faster than eager on the
  H200 and slower on the CPU (docs/performance.md), so without TorchScript the model is served eager.

``IMAGE_CLASSIFIER_PRECISION`` / ``IMAGE_CLASSIFIER_GRAPH`` = ``measure`` time the candidates instead
(the previous behaviour, ``fast_paths.measure``); a named mode forces it.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import torch

MIN_GFLOP_FOR_BF16 = 1.0  # ResNet-50 at 224 px: 8.2; EfficientNet-Lite0: 0.8; ResNet-18 at 32 px: 0.07
CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # /proc/cpuinfo: bf16 dot products in hardware
FIRST_GPU_WITH_BF16 = (8, 0)  # Ampere


@dataclass(frozen=True)
class Facts:
    """What the rule reads: the device, its bf16 units, whether TorchScript works, the torch version."""

    device: str  # cpu | cuda
    bf16_units: bool  # CPU: avx512_bf16/AMX present; GPU: compute capability >= 8.0
    capability: str  # the GPU's compute capability ("9.0"), or the CPU's bf16 flags ("avx512_bf16" / "none")
    torchscript: bool
    torch_version: str

    def describe(self) -> str:
        return (
            f"device={self.device} bf16_units={str(self.bf16_units).lower()} capability={self.capability} "
            f"torchscript={str(self.torchscript).lower()} torch={self.torch_version}"
        )


@dataclass(frozen=True)
class Decision:
    precision: str
    graph: str
    reason: str  # why the precision


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset[str]:
    """The first processor's flags (every core of a machine has the same)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return frozenset(value.split())
    return frozenset()


def torchscript_available() -> bool:
    """torch.jit's trace and freeze are deprecated: a torch without them serves eager."""
    return callable(getattr(torch.jit, "trace", None)) and callable(getattr(torch.jit, "freeze", None))


@functools.cache
def read_facts(device_type: str) -> Facts:
    """Milliseconds: /proc/cpuinfo, the CUDA device's properties (already initialised by the model's move)."""
    if device_type == "cuda":
        major, minor = torch.cuda.get_device_capability()
        bf16, capability = (major, minor) >= FIRST_GPU_WITH_BF16, f"{major}.{minor}"
    else:
        present = [flag for flag in CPU_BF16_FLAGS if flag in cpu_flags()]
        bf16, capability = bool(present), "+".join(present) or "none"
    return Facts(device_type, bf16, capability, torchscript_available(), torch.__version__.split("+")[0])


def decide(facts: Facts, gflop_per_image: float) -> Decision:
    graph = "frozen" if facts.torchscript else "eager"
    if facts.device == "cuda":
        return Decision("fp32", graph, "gpu_tf32" if facts.bf16_units else "no_bf16_units")
    if not facts.bf16_units:
        return Decision("fp32", graph, "no_bf16_units")
    if gflop_per_image < MIN_GFLOP_FOR_BF16:
        return Decision("fp32", graph, "small_model")
    return Decision("bf16", graph, "bf16_units")
