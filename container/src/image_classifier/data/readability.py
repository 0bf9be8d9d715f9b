"""One policy for unreadable images, used by the trainer and by deploy's pre-flight alike.

Real photo folders hold a few files that do not decode (truncated downloads, HTML saved as
``.jpg``). Up to ``max_bad_fraction`` of them are skipped and logged; above it, or when a split
or a class is left with no readable image, the job fails with a reason that names them. Deploy
runs the same function before uploading, so a data set it accepts is one the trainer accepts.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path

from image_classifier.data.discovery import ImageFolderIndex
from image_classifier.data.samples import Samples
from image_classifier.errors import UserError
from image_classifier.metrics import format_line

log = logging.getLogger(__name__)

LOGGED_FILES = 20  # one warning line each; the count covers the rest
EXAMPLES_IN_ERROR = 3


def log_unreadable(bad: Mapping[Path, str]) -> None:
    """One ``event=unreadable_image`` line per file (the first ``LOGGED_FILES``), reason without the path."""
    for path in sorted(bad)[:LOGGED_FILES]:
        reason = bad[path].split(": ", 1)[-1].replace(" ", "_")[:160]
        log.warning(format_line("unreadable_image", path=str(path), reason=reason))


def keep_readable(indices: Sequence[ImageFolderIndex], bad: Collection[Path], max_bad_fraction: float) -> list[Samples]:
    """Each split's samples without the unreadable files; ``UserError`` where the policy refuses."""
    total = sum(len(index.samples) for index in indices)
    fraction = len(bad) / max(total, 1)
    if fraction > max_bad_fraction:
        raise UserError(
            f"{len(bad)} of {total} images are unreadable ({fraction:.1%} > max_bad_fraction={max_bad_fraction}), "
            f"e.g. {[str(p) for p in sorted(bad)[:EXAMPLES_IN_ERROR]]}"
        )
    kept = []
    for index in indices:
        samples = Samples((path, label) for path, label in index.samples if path not in bad) if bad else index.samples
        if not samples:
            raise UserError(f"channel '{index.split}' has no readable images")
        present = set(samples.labels.tolist())
        if len(present) != len(index.classes):
            empty = [name for label, name in enumerate(index.classes) if label not in present]
            raise UserError(f"channel '{index.split}' has classes with no readable image: {empty}")
        kept.append(samples)
    return kept


def too_many_lost(lost: int, total: int, max_bad_fraction: float) -> UserError | None:
    """Images that stopped decoding during training count against the same threshold."""
    if lost / max(total, 1) > max_bad_fraction:
        return UserError(f"{lost} images became unreadable during training (> max_bad_fraction={max_bad_fraction})")
    return None
