"""Stop and delete, by tag, what this run (``--all-runs``: this project) still has running."""

from __future__ import annotations

from deploy import cleanup
from deploy.context import Context, StepError


def step_cleanup(ctx: Context) -> None:
    """Running jobs stopped; endpoints, endpoint configs and models deleted (``deploy.cleanup``)."""
    run_id = None if ctx.all_runs else ctx.state.run_id
    found = cleanup.find(ctx.aws.client("sagemaker"), run_id)
    outcomes = ctx.release(found, keep_hosting=False, reason="cleanup")
    ctx.say(f"event=cleanup_done run_id={run_id or 'all'} released={sum(o.action in ('stopped', 'deleted') for o in outcomes)}")
    if any(o.action == "failed" for o in outcomes):
        raise StepError("cleanup could not release everything: see the event=still_billing lines")
