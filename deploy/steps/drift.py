"""Compare an endpoint's captured traffic with the test set (``deploy.drift``)."""

from __future__ import annotations

from deploy.context import Context, StepError


class DriftFound(StepError):
    """Drift above the configured threshold: the CLI exits 3, so a scheduled job can alert."""

    exit_code = 3


def step_drift(ctx: Context) -> None:
    if ctx.dry_run:
        return
    raise StepError("drift: not built yet")
