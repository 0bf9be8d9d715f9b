"""What an instance type's name tells before anything is sent: known to SageMaker, local NVMe, GPU.

- Known: each use has its own list in the service model (``TrainingInstanceType``,
  ``ProductionVariantInstanceType``, ``TransformInstanceType``, ``ProcessingInstanceType``); a
  type missing from it is refused by SageMaker, so it is refused here, with the closest names.
- Local NVMe storage: SageMaker refuses a volume KMS key on these (their instance storage is
  encrypted by a hardware module). EC2's naming marks most with a ``d`` (``m5d``, ``g4dn``,
  ``p4de``); ``dl1``, ``g5``, ``g6``, ``g7``, ``p5``, ``p6`` and ``trn1``/``trn2`` have it
  without the letter (EC2 "Instance store volumes" page). Erring towards "has NVMe" only means
  the volume key is not sent, never a refused request.
- Accelerated (GPU, Inferentia, Trainium): multi-model-server multi-model endpoints run on CPU
  instance types only.
"""

from __future__ import annotations

import difflib
import re

from deploy.service_model import enum

ENUMS = {
    "training": "TrainingInstanceType",
    "hosting": "ProductionVariantInstanceType",
    "transform": "TransformInstanceType",
    "processing": "ProcessingInstanceType",
}
_FAMILY = re.compile(r"^ml\.(?P<series>[a-z]+)(?P<generation>\d+)(?P<attributes>[a-z]*)(?P<variant>-[a-z0-9-]+)?\.[0-9a-z]+$")
_NVME_WITHOUT_D = ("dl1", "g5", "g6", "g7", "p5", "p6", "trn1", "trn2")
_ACCELERATED_SERIES = ("g", "p", "inf", "trn", "dl")


def _parts(instance_type: str) -> re.Match[str] | None:
    return _FAMILY.match(instance_type)


def is_known(instance_type: str, use: str) -> bool:
    return instance_type in enum("sagemaker", ENUMS[use])


def closest(instance_type: str, use: str) -> list[str]:
    return difflib.get_close_matches(instance_type, enum("sagemaker", ENUMS[use]), n=3, cutoff=0.6)


def has_local_nvme(instance_type: str) -> bool:
    parts = _parts(instance_type)
    if parts is None:
        return False
    base = parts["series"] + parts["generation"]
    return "d" in parts["attributes"] or base in _NVME_WITHOUT_D


def is_accelerated(instance_type: str) -> bool:
    parts = _parts(instance_type)
    return parts is not None and parts["series"] in _ACCELERATED_SERIES
