"""Which NVIDIA driver the host has, what the image's CUDA build needs, and what follows from it.

SageMaker hosts run different drivers (470, 535, 550, 580: see docs/image.md, "GPU drivers"), and
the PyPI torch in this image is a CUDA 13 build that needs driver >= 580. On an older driver torch
sees no GPU, and a job would silently train on the CPU of a billed GPU instance. So at start:

- ``entry`` (the image's ENTRYPOINT) reads the driver and, where the image carries NVIDIA's CUDA
  forward-compatibility libraries (built on an NVIDIA CUDA base: ``CUDA_COMPAT_IMAGE``), puts them
  first on ``LD_LIBRARY_PATH`` when the driver is older than they are, as AWS describes for its
  own containers;
- ``train`` and ``serve`` stop with the reason (driver found, driver needed, the fix) when a GPU is
  expected and CUDA cannot be used, unless ``IMAGE_CLASSIFIER_ALLOW_CPU=true`` says to run on CPU.

Nothing here imports torch: the entry runs before any CUDA library is loaded. Every reading takes
its source as a parameter (a root folder, an environment), so the decision is tested on fakes.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path

from image_classifier import params

log = logging.getLogger(__name__)

# The oldest Linux driver each CUDA major release runs on (CUDA minor-version compatibility:
# NVIDIA's CUDA Toolkit release notes, table "CUDA Toolkit and Minimum Required Driver Version").
MINIMUM_DRIVER = {11: (450, 80, 2), 12: (525, 60, 13), 13: (580, 65, 6)}
# Driver branches NVIDIA supports as forward-compatibility targets of each CUDA major release
# ("CUDA Compatibility", forward-compatibility support matrix: cuda-compat-13-x is supported on
# R535 and R570; R470 and R550 are end of life and "not supported targets").
COMPAT_BRANCHES = {13: frozenset({535, 570})}
# GPU instance families of SageMaker (the accelerator is NVIDIA in each): training and hosting.
GPU_FAMILIES = ("p2", "p3", "p3dn", "p4d", "p4de", "p5", "p5e", "p5en", "p6", "g4dn", "g5", "g6", "g6e", "g6f", "gr6", "g7e")
_DRIVER_IN_PROC = re.compile(r"Kernel Module(?:\s+for\s+\S+)?\s+(\d+\.\d+(?:\.\d+)?)")
_COMPAT_LIBRARY = re.compile(r"^libcuda\.so\.(\d+\.\d+(?:\.\d+)?)$")
_TORCH_CUDA = re.compile(r"^cuda\b[^=]*=\s*['\"]([\d.]+)['\"]", re.MULTILINE)
_DEVICE_NODE = re.compile(r"^nvidia\d+$")

Version = tuple[int, ...]


def parse_version(text: str) -> Version:
    return tuple(int(part) for part in text.split("."))


def show(version: Version | None) -> str:
    return ".".join(str(v) for v in version) if version else "none"


@dataclass(frozen=True)
class HostFacts:
    """What the container can see of the GPU side of its host, read without loading CUDA."""

    driver: Version | None  # the kernel module's version; None without an NVIDIA driver
    devices: tuple[str, ...]  # /dev/nvidia0, /dev/nvidia1, ...
    image_cuda: Version | None  # the CUDA version torch was built with; None for a CPU build
    compat_dir: Path | None  # NVIDIA's forward-compatibility libraries in the image, if any
    compat_driver: Version | None  # the driver version those libraries stand in for

    @property
    def needed(self) -> Version | None:
        return MINIMUM_DRIVER.get(self.image_cuda[0]) if self.image_cuda else None


def read_driver(root: Path = Path("/")) -> Version | None:
    """From ``/proc/driver/nvidia/version``; else ``nvidia-smi``; else None."""
    try:
        found = _DRIVER_IN_PROC.search((root / "proc/driver/nvidia/version").read_text())
        if found:
            return parse_version(found.group(1))
    except OSError:
        pass
    if root == Path("/") and shutil.which("nvidia-smi"):
        try:
            out = subprocess.run(
                ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"], capture_output=True, text=True, timeout=20
            ).stdout.split()
            return parse_version(out[0]) if out else None
        except (OSError, subprocess.SubprocessError, ValueError):
            return None
    return None


def read_devices(root: Path = Path("/")) -> tuple[str, ...]:
    try:
        return tuple(sorted(f"/dev/{p.name}" for p in (root / "dev").iterdir() if _DEVICE_NODE.match(p.name)))
    except OSError:
        return ()


def read_image_cuda() -> Version | None:
    """torch's ``version.cuda``, read from its source file so that CUDA is not loaded."""
    spec = find_spec("torch")
    if spec is None or not spec.origin:
        return None
    try:
        found = _TORCH_CUDA.search((Path(spec.origin).parent / "version.py").read_text())
    except OSError:
        return None
    return parse_version(found.group(1)) if found else None


def read_compat(directory: Path) -> Version | None:
    """The newest ``libcuda.so.<driver version>`` NVIDIA's compat package put in ``directory``."""
    try:
        versions = [parse_version(m.group(1)) for p in directory.iterdir() if (m := _COMPAT_LIBRARY.match(p.name))]
    except OSError:
        return None
    return max(versions) if versions else None


def read_host(environ: Mapping[str, str] | None = None, root: Path = Path("/")) -> HostFacts:
    environ = os.environ if environ is None else environ
    compat_dir = Path(environ.get(params.CUDA_COMPAT_DIR_ENV) or params.DEFAULT_CUDA_COMPAT_DIR)
    compat = read_compat(root / compat_dir.relative_to("/")) if compat_dir.is_absolute() else None
    return HostFacts(read_driver(root), read_devices(root), read_image_cuda(), compat_dir if compat else None, compat)


@dataclass(frozen=True)
class Decision:
    """How this image can use the host's GPU: ``cpu`` (none visible), ``native``, ``compat`` or ``unusable``."""

    mode: str
    reason: str  # one line, names the driver found and the driver needed
    library_path: str | None = None  # put first on LD_LIBRARY_PATH (compat mode)

    def log_line(self, facts: HostFacts) -> str:
        return (
            f"event=cuda_host mode={self.mode} driver={show(facts.driver)} image_cuda={show(facts.image_cuda)} "
            f"needed={show(facts.needed)} compat={show(facts.compat_driver)} devices={len(facts.devices)}"
        )


def decide(facts: HostFacts) -> Decision:
    """The driver against what the image's CUDA needs; the forward-compatibility libraries where they help."""
    if facts.driver is None:
        if facts.devices:
            return Decision("unusable", f"{len(facts.devices)} NVIDIA device(s) visible but no NVIDIA driver is loaded; {_fix(facts)}")
        return Decision("cpu", "no NVIDIA GPU visible")
    needed = facts.needed
    if needed is None:
        return Decision("unusable", f"NVIDIA driver {show(facts.driver)} found, but this image's torch is a CPU-only build; {_fix(facts)}")
    if facts.driver >= needed:
        return Decision("native", f"driver {show(facts.driver)} >= {show(needed)} needed by CUDA {show(facts.image_cuda)}")
    branch, cuda_major = facts.driver[0], needed_major(facts)
    supported = COMPAT_BRANCHES.get(cuda_major, frozenset())
    if facts.compat_dir is not None and facts.compat_driver is not None and facts.compat_driver >= needed:
        if branch in supported:
            return Decision(
                "compat",
                f"driver {show(facts.driver)} < {show(needed)} needed by CUDA {show(facts.image_cuda)}: "
                f"forward-compatibility libraries {show(facts.compat_driver)} from {facts.compat_dir}",
                str(facts.compat_dir),
            )
        why = f"and driver branch {branch} is not a forward-compatibility target of CUDA {cuda_major} (NVIDIA supports {sorted(supported)})"
    elif facts.compat_dir is not None:
        why = "and its forward-compatibility libraries are older"
    else:
        why = "and it carries no forward-compatibility libraries"
    return Decision(
        "unusable",
        f"NVIDIA driver {show(facts.driver)} found; this image's torch (CUDA {show(facts.image_cuda)}) needs driver >= {show(needed)} {why}; "
        f"{_fix(facts)}",
    )


def needed_major(facts: HostFacts) -> int:
    return facts.image_cuda[0] if facts.image_cuda else 0


def _fix(facts: HostFacts) -> str:
    return (
        "fix: on SageMaker endpoints set InferenceAmiVersion al2023-ami-sagemaker-inference-gpu-4-1 (driver 580; deploy/ does it), "
        "or build the image with --build-arg CUDA_COMPAT_IMAGE=<an NVIDIA CUDA 13 base image> to carry forward-compatibility "
        f"libraries (data-center GPUs), or set {params.ALLOW_CPU_ENV}=true to run on the CPU (docs/image.md, GPU drivers)"
    )


def gpu_expected(facts: HostFacts, environ: Mapping[str, str], instance_type: str | None = None) -> str | None:
    """Why this process must find a usable GPU, or None: SM_NUM_GPUS > 0, a GPU instance type, visible NVIDIA devices."""
    gpus = environ.get(params.SM_NUM_GPUS_ENV, "").strip()
    if gpus.isdigit() and int(gpus) > 0:
        return f"{params.SM_NUM_GPUS_ENV}={gpus}"
    family = (instance_type or "").removeprefix("ml.").split(".")[0]
    if family in GPU_FAMILIES:
        return f"instance type {instance_type}"
    if facts.devices:
        return f"NVIDIA device(s) visible: {','.join(facts.devices)}"
    return None


def cpu_allowed(environ: Mapping[str, str]) -> bool:
    return environ.get(params.ALLOW_CPU_ENV, "").strip().lower() in ("1", "true", "yes")


def cuda_refusal(
    expected: str | None, cuda_usable: bool, facts: HostFacts, environ: Mapping[str, str], torch_reason: str | None = None
) -> str | None:
    """The one-line reason to stop, or None: a GPU is expected, CUDA is not usable, and CPU was not asked for."""
    if expected is None or cuda_usable or cpu_allowed(environ):
        return None
    decision = decide(facts)
    if torch_reason:
        detail = f"{torch_reason}; use a newer GPU instance type (ml.g4dn or later), or set {params.ALLOW_CPU_ENV}=true"
    elif decision.mode == "unusable":
        detail = decision.reason
    elif decision.mode == "cpu":
        detail = f"no NVIDIA GPU or driver is visible in the container (docker run --gpus all, the NVIDIA Container Toolkit); {_fix(facts)}"
    else:
        detail = f"{decision.reason}, yet torch cannot use CUDA (a GPU this build has no kernels for?); {_fix(facts)}"
    return f"a GPU is expected ({expected}) but CUDA cannot be used: {detail}"


def _runs_on(capability: tuple[int, int], arch_list: list[str]) -> bool:
    """SASS for sm_XY runs on sm_XZ (Z >= Y); PTX for compute_XY is JIT-compiled for any newer GPU."""
    major, minor = capability
    for arch in arch_list:
        kind, _, digits = arch.partition("_")
        if not digits.isdigit():
            continue
        built = (int(digits[:-1]), int(digits[-1]))
        if (kind == "sm" and built[0] == major and built[1] <= minor) or (kind == "compute" and built <= capability):
            return True
    return False


def torch_cuda() -> tuple[int, str | None]:
    """GPUs torch can really use, and why not where it sees some it cannot (e.g. a V100 in a CUDA 13 build)."""
    import torch

    if not torch.cuda.is_available():
        return 0, None
    arches = torch.cuda.get_arch_list()
    unsupported = []
    for index in range(torch.cuda.device_count()):
        capability = torch.cuda.get_device_capability(index)
        if not _runs_on(capability, arches):
            unsupported.append(f"{torch.cuda.get_device_name(index)} (sm_{capability[0]}{capability[1]})")
    if unsupported:
        return 0, f"this build has kernels for {' '.join(arches)} only, not for {', '.join(unsupported)}"
    return torch.cuda.device_count(), None
