"""What only a local ``train`` does: the built-in sample for ``docker compose up``, and file ownership.

The sample. ``docker compose up`` on a fresh clone must train and serve with no step before it.
The compose image (Dockerfile target ``local``) carries a small sample at ``/opt/sample``: real
Fashion-MNIST photos in ``data/``, EfficientNet-Lite0 ImageNet weights in ``pretrained/`` and the
``hyperparameters.json`` that fits them. Compose sets ``IMAGE_CLASSIFIER_SAMPLE_DIR``; then, and
only when ``/opt/ml`` holds no data channel, the sample is copied in as the channels (and its
hyperparameters, unless the folder has its own). Data of the user's in ``./local/opt_ml`` is always
used instead. SageMaker never sets the variable (and a job with ``TRAINING_JOB_ARN`` ignores it),
so an empty channel there still fails the job.

Ownership. A container runs as root, so what ``train`` writes into a bind-mounted ``./local/opt_ml``
would belong to root and a later ``make local-data`` (run as the user) could not remove it. When
the folder itself belongs to someone else, everything written under it is handed back to that
owner at the end of the job. On SageMaker ``/opt/ml`` belongs to root: nothing changes.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Mapping
from pathlib import Path

from image_classifier import params
from image_classifier.metrics import format_line

log = logging.getLogger(__name__)


def has_data(base: Path) -> bool:
    """Any channel folder under ``input/data`` with a file somewhere inside."""
    data = base / params.DATA_DIR
    return data.is_dir() and any(p.is_file() for channel in data.iterdir() if channel.is_dir() for p in channel.rglob("*"))


def seed_sample(base: Path, environ: Mapping[str, str]) -> bool:
    """Copy the built-in sample into ``base`` where compose asks and ``base`` has no data; True if it did."""
    sample = environ.get(params.SAMPLE_DIR_ENV)
    if not sample:
        return False
    if environ.get(params.TRAINING_JOB_ARN_ENV):
        log.warning(format_line("sample_unused", reason="sagemaker_job"))
        return False
    if has_data(base):
        log.info(format_line("sample_unused", reason="data_present", base=str(base)))
        return False
    source = Path(sample)
    data = base / params.DATA_DIR
    channels = sorted(p.name for p in (source / "data").iterdir() if p.is_dir())
    for channel in channels:
        shutil.rmtree(data / channel, ignore_errors=True)
        shutil.copytree(source / "data" / channel, data / channel)
    shutil.rmtree(data / params.PRETRAINED_CHANNEL, ignore_errors=True)
    shutil.copytree(source / params.PRETRAINED_CHANNEL, data / params.PRETRAINED_CHANNEL)
    config = base / params.CONFIG_DIR
    config.mkdir(parents=True, exist_ok=True)
    described = {c: {"ContentType": "application/x-image", "TrainingInputMode": "File"} for c in [*channels, params.PRETRAINED_CHANNEL]}
    (config / params.INPUT_DATA_CONFIG_FILE).write_text(json.dumps(described, indent=2) + "\n")
    hyperparameters = config / params.HYPERPARAMETERS_FILE
    own_hyperparameters = hyperparameters.exists()
    if not own_hyperparameters:
        shutil.copy(source / params.HYPERPARAMETERS_FILE, hyperparameters)
    log.info(format_line("sample_seeded", source=str(source), channels=",".join(channels), own_hyperparameters=own_hyperparameters))
    return True


def hand_back(base: Path) -> int:
    """Give what root wrote under ``base`` to ``base``'s owner (a bind mount of the user's folder); the count."""
    if os.geteuid() != 0:
        return 0
    try:
        owner = base.stat()
    except OSError:
        return 0
    if owner.st_uid == 0:
        return 0
    changed = 0
    for folder, dirs, files in os.walk(base):
        for name in (*dirs, *files):
            path = os.path.join(folder, name)
            try:
                if os.lstat(path).st_uid == 0:
                    os.lchown(path, owner.st_uid, owner.st_gid)
                    changed += 1
            except OSError:
                continue
    if changed:
        log.info(format_line("ownership_returned", base=str(base), uid=owner.st_uid, paths=changed))
    return changed
