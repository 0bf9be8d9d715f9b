"""The forms a KMS key takes, and which fields take which: SageMaker's rule is per field.

Key id (``1234abcd-...``, ``mrk-...``), key ARN, alias name (``alias/x``) or alias ARN. Output
locations (S3 uploads, job outputs, endpoint configs, transform volumes, ECR) take all four;
the volume of a training, tuning or processing job takes a key id or key ARN only (API
reference: ``ResourceConfig``, ``HyperParameterTuningResourceConfig``; ``ProcessingClusterConfig``
names no alias form, so it is treated the same way).
"""

from __future__ import annotations

import re

_KEY = r"([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|mrk-[0-9a-f]{32})"
_ARN = r"arn:aws(-cn|-us-gov|-iso|-iso-b)?:kms:[a-z0-9-]+:\d{12}:"
_ALIAS = r"alias/[a-zA-Z0-9/_-]{1,250}"
KEY_ID_OR_ARN = re.compile(rf"^({_KEY}|{_ARN}key/{_KEY})$")
ALIAS = re.compile(rf"^({_ALIAS}|{_ARN}{_ALIAS})$")


def is_key_id_or_arn(value: str) -> bool:
    return bool(KEY_ID_OR_ARN.match(value))


def is_alias(value: str) -> bool:
    return bool(ALIAS.match(value))


def describe_key_hint(alias: str) -> str:
    """The command that turns an alias into the key ARN a volume field takes."""
    return f"aws kms describe-key --key-id {alias} --query KeyMetadata.Arn --output text"
