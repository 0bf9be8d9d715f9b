"""Which SageMaker GPU hosts can run the image, told from the instance type before anything is sent.

The image's torch is a CUDA 13.0 build: it needs an NVIDIA driver >= 580, has kernels for sm_75
and newer only, and is built for linux/amd64 (docs/image.md, "GPU drivers", has the matrix and
the sources). So:

- Real-time and async endpoints: SageMaker's default host drivers (470 on g4dn/g5/p4d, 535 on
  g6/p5, 550 on p5e) are too old; a GPU variant gets ``InferenceAmiVersion`` =
  ``al2023-ami-sagemaker-inference-gpu-4-1`` (driver 580: native). ``inference_ami_version`` may
  name another AMI of the service model's enum: the 535 ones run the image only when it carries
  NVIDIA's forward-compatibility libraries (``image_cuda_compat``); 550 is not a
  forward-compatibility target of CUDA 13 (NVIDIA), neuron is not a GPU AMI.
- Batch transform has no 580 AMI: only ``al2-ami-sagemaker-batch-gpu-535`` with those libraries,
  and the job's environment ``SAGEMAKER_CUDA_COMPAT_DISABLED=true`` (AWS's page on the NVIDIA
  Container Toolkit asks images that select the libraries themselves to set it).
- Training hosts' drivers are neither documented nor selectable: the image decides at start.
- Never: ml.p2 (K80, sm_37) and ml.p3/p3dn (V100, sm_70) have no kernels in the build; ml.p6e
  (GB200) hosts are Arm.
"""

from __future__ import annotations

import re

NATIVE_AMI = "al2023-ami-sagemaker-inference-gpu-4-1"
TRANSFORM_AMI = "al2-ami-sagemaker-batch-gpu-535"
COMPAT_DISABLED_ENV = "SAGEMAKER_CUDA_COMPAT_DISABLED"
NEEDED_DRIVER = 580
COMPAT_DRIVERS = (535, 570)  # NVIDIA's forward-compatibility targets of CUDA 13 among SageMaker's
INFERENCE_AMI_DRIVERS = {
    "al2-ami-sagemaker-inference-gpu-2": 535,
    "al2-ami-sagemaker-inference-gpu-2-1": 535,
    "al2-ami-sagemaker-inference-gpu-3-1": 550,
    NATIVE_AMI: 580,
}
CUDA_COMPAT_IMAGE = "nvidia/cuda:13.0.2-base-ubuntu24.04"  # NVIDIA's public CUDA 13 base: /usr/local/cuda/compat
BUILD_COMPAT = (
    f"build the image with --build-arg CUDA_COMPAT_IMAGE={CUDA_COMPAT_IMAGE} (NVIDIA's "
    "forward-compatibility libraries; deploy/push_and_train.sh does when it builds), push it and set image_cuda_compat = true"
)
_NEVER = {
    "p2": "a K80 (sm_37): the image's CUDA 13 build has no kernels for it",
    "p3": "a V100 (sm_70): the image's CUDA 13 build has no kernels for it (CUDA 13 dropped Volta)",
    "p3dn": "a V100 (sm_70): the image's CUDA 13 build has no kernels for it (CUDA 13 dropped Volta)",
    "p6e": "an Arm (Grace) host: the image is built for linux/amd64",
}
_FAMILY = re.compile(r"^ml\.(?P<family>(?P<series>[a-z]+)\d+[a-z]*)[.-]")


def _family(instance_type: str) -> tuple[str, str]:
    match = _FAMILY.match(instance_type)
    return (match["family"], match["series"]) if match else ("", "")


def is_nvidia(instance_type: str) -> bool:
    """ml.g* and ml.p*: NVIDIA GPUs (every g and p family in SageMaker's instance lists)."""
    return _family(instance_type)[1] in ("g", "p")


def never(instance_type: str) -> str | None:
    """Why the image can never run on this type, with the fix; None if it can."""
    reason = _NEVER.get(_family(instance_type)[0])
    return f"{instance_type} is {reason}: choose ml.g5, ml.g6, ml.p4d or newer (or a CPU type)" if reason else None


def inference_ami(instance_type: str, override: str | None) -> str | None:
    """The ``InferenceAmiVersion`` an endpoint variant of this type gets (None: CPU, nothing to send)."""
    return (override or NATIVE_AMI) if is_nvidia(instance_type) else None


def ami_problem(ami: str | None, compat: bool) -> str | None:
    """Why a GPU variant on host image ``ami`` (None: SageMaker's default) cannot run the image."""
    if ami is None:
        return (
            "SageMaker's default GPU host image has driver 470, 535 or 550, older than the 580 the image's CUDA 13 build "
            f"needs: set InferenceAmiVersion {NATIVE_AMI}"
        )
    driver = INFERENCE_AMI_DRIVERS.get(ami)
    if driver is None:
        return f"{ami!r} is not a GPU host image: use {NATIVE_AMI}"
    if driver >= NEEDED_DRIVER or (driver in COMPAT_DRIVERS and compat):
        return None
    if driver in COMPAT_DRIVERS:
        return f"{ami} has driver {driver}: the CUDA 13 build runs there only with forward-compatibility libraries: {BUILD_COMPAT}, or use {NATIVE_AMI}"
    return f"{ami} has driver {driver}, not a forward-compatibility target of CUDA 13 (NVIDIA): use {NATIVE_AMI}"


def transform_settings(instance_type: str, compat: bool) -> tuple[str | None, dict[str, str]]:
    """(``TransformAmiVersion``, environment) of a transform job on this type; (None, {}) on CPU."""
    if is_nvidia(instance_type) and compat:
        return TRANSFORM_AMI, {COMPAT_DISABLED_ENV: "true"}
    return None, {}


def transform_problem(instance_type: str, compat: bool) -> str | None:
    """GPU batch transform works only with the compatibility libraries (no batch AMI has driver 580)."""
    if not is_nvidia(instance_type) or compat:
        return None
    return (
        f"{instance_type} is a GPU; SageMaker's batch transform hosts run driver 470 or 535 (no 580 AMI), where the "
        f"image's CUDA 13 build runs only with forward-compatibility libraries: {BUILD_COMPAT}, or use a CPU type "
        "(e.g. ml.m5.xlarge)"
    )
