"""Stop and delete, by tag, what this run (``--all-runs``: this project) still has running."""

from __future__ import annotations

from deploy import checkpoints, cleanup
from deploy.context import Context, StepError


def step_cleanup(ctx: Context) -> None:
    """Running jobs stopped; alarms, autoscaling targets, endpoints, endpoint configs and models deleted (``deploy.cleanup``);
    ended jobs' checkpoints deleted; the async requests and answers and Clarify's copies of test images deleted."""
    run_id = None if ctx.all_runs else ctx.state.run_id
    found = cleanup.find(ctx.aws.client("sagemaker"), run_id)
    found += cleanup.find_scaling(ctx.aws.client("application-autoscaling"), ctx.aws.client("cloudwatch"), run_id)
    outcomes = ctx.release(found, keep_hosting=False, reason="cleanup")
    if not ctx.dry_run:  # ended jobs' checkpoint folders (deploy.checkpoints): nothing resumes them
        root = ctx.cfg.checkpoint_uri if ctx.all_runs else f"{ctx.cfg.checkpoint_uri}/{ctx.state.run_id}"
        checkpoints.prune(ctx.aws.client("s3"), ctx.aws.client("sagemaker"), root, ctx.say, depth=2 if ctx.all_runs else 1)
        scratch = cleanup.scratch_keys(ctx.aws.client("s3"), ctx.cfg.bucket, ctx.cfg.prefix, run_id)
        cleanup.delete_keys(ctx.aws.client("s3"), ctx.cfg.bucket, scratch)
        ctx.say(f"event=scratch_deleted run_id={run_id or 'all'} objects={len(scratch)} folders={','.join(cleanup.SCRATCH)}")
    ctx.say(f"event=cleanup_done run_id={run_id or 'all'} released={sum(o.action in ('stopped', 'deleted') for o in outcomes)}")
    if any(o.action == "failed" for o in outcomes):
        raise StepError("cleanup could not release everything: see the event=still_billing lines")
