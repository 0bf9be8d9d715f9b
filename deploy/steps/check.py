"""The pre-flight of a new account (``deploy.preflight``): the first step of ``all``."""

from __future__ import annotations

from deploy import preflight
from deploy.context import Context, StepError


def step_check(ctx: Context) -> None:
    if ctx.dry_run:  # the pre-flight reads the account; a dry run sends nothing, not even to STS
        ctx.say("event=check_skipped reason=dry_run")
        return
    findings = preflight.run(ctx.aws, ctx.cfg, ctx.plan)
    for finding in findings:
        ctx.say(finding.line())
    problems = sum(f.status == "problem" for f in findings)
    ctx.say(f"event=check_done problems={problems} warnings={sum(f.status == 'warning' for f in findings)}")
    if problems:
        raise StepError(f"the pre-flight found {problems} problem(s): each status=problem line above names its fix")
