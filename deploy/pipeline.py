"""The AWS pipeline: a list of steps, each runnable alone (state carries between them).

    python -m deploy.pipeline check                            # credentials, bucket region, role, quotas, Docker
    python -m deploy.pipeline data --data ~/dogImages.zip      # split, pre-flight, upload
    python -m deploy.pipeline weights                          # ImageNet weights -> pretrained channel
    python -m deploy.pipeline tune best train                  # tuning, best trial, final job
    python -m deploy.pipeline deploy query --yes               # real-time endpoint + top-5 of a sample, then deleted
    python -m deploy.pipeline mme transform clarify --yes      # the optional steps
    python -m deploy.pipeline explain                          # heatmaps over the test set, an HTML gallery (no Clarify needed)
    python -m deploy.pipeline async --yes                      # asynchronous endpoint (S3 in and out, scales to zero) + top-5
    python -m deploy.pipeline serverless --yes   # serverless endpoint (CPU) + top-5
    python -m deploy.pipeline cleanup                          # stop/delete what this run still has (by tag)
    python -m deploy.pipeline register                         # the run's final model -> a version in the registry group
    python -m deploy.pipeline models                           # the group's versions: metrics, approval, where each is live
    python -m deploy.pipeline approve --version 3              # (or reject) the version's approval status
    python -m deploy.pipeline promote --endpoint prod --yes    # the newest approved version onto an endpoint, blue/green
    python -m deploy.pipeline drift --endpoint prod            # captured traffic vs the test set; exit 3 above the threshold
    python -m deploy.pipeline retire --endpoint prod --yes     # delete a promoted endpoint (cleanup never does)
    python -m deploy.pipeline all --data PATH --yes            # check data weights tune best train deploy query

Nothing is left billing: when a step fails, or on Ctrl-C, SIGTERM or SIGHUP, this invocation's
jobs in progress are stopped and its endpoints, endpoint configs and models deleted; at the
end, its endpoints are deleted unless ``--keep-endpoint``. ``--dry-run`` prints every create
request as JSON and sends nothing. The configuration and every request are checked against
SageMaker's rules first (docs/aws.md).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from deploy import config as config_module
from deploy import quiet, refusals, signals
from deploy.aws import Aws
from deploy.config import ConfigError, DeployConfig
from deploy.context import Context, StepError
from deploy.rules import RequestRefused
from deploy.state import RunIdError, RunState, check_run_id, load_state, new_run_id
from deploy.steps import async_inference, check, clarify, cleanup, explain, hosting, multi_model, serverless, training, transform
from deploy.steps import drift as drift_step
from deploy.steps import promote as promote_step
from deploy.steps import registry as registry_step
from deploy.teardown import Outcome

log = logging.getLogger("deploy")


@dataclass(frozen=True)
class Step:
    name: str
    run: Callable[[Context], None]
    billable: bool = False  # creates an endpoint (or Clarify's shadow one): needs --yes
    in_all: bool = False  # one of the steps of `all`
    optional: bool = False  # may join `all` with --with


STEPS = (
    Step("check", check.step_check, in_all=True),
    Step("data", training.step_data, in_all=True),
    Step("weights", training.step_weights, in_all=True),
    Step("tune", training.step_tune, in_all=True),
    Step("best", training.step_best, in_all=True),
    Step("train", training.step_train, in_all=True),
    Step("register", registry_step.step_register, in_all=True),
    Step("reports", training.step_reports),
    Step("deploy", hosting.step_deploy, billable=True, in_all=True),
    Step("query", hosting.step_query, in_all=True),
    Step("mme", multi_model.step_mme, billable=True, optional=True),
    Step("transform", transform.step_transform, optional=True),
    Step("clarify", clarify.step_clarify, billable=True, optional=True),
    Step("explain", explain.step_explain, optional=True),
    Step("async", async_inference.step_async, billable=True, optional=True),
    Step("serverless", serverless.step_serverless, billable=True, optional=True),
    Step("cleanup", cleanup.step_cleanup),
    # day two: the registry group's versions, onto an endpoint clients call, and watched
    Step("models", registry_step.step_models),
    Step("approve", registry_step.step_approve),
    Step("reject", registry_step.step_reject),
    Step("promote", promote_step.step_promote, billable=True),
    Step("drift", drift_step.step_drift),
    Step("retire", promote_step.step_retire, billable=True),
)
BY_NAME = {step.name: step for step in STEPS}
NEEDS_ENDPOINT = ("query",)  # held back with the billable steps when --yes is missing


def run(steps: list[str], ctx: Context, plan: list[str] | None = None) -> Context:
    """Run the steps in order, releasing what they created when one fails or at the end.

    ``plan``: the steps the pre-flight checks quotas for (default: ``steps``). A dry run then
    prints the recorded requests, alone on stdout.
    """
    check_plan(ctx.cfg, steps)
    ctx.plan = list(plan or steps)
    start = len(ctx.state.resources)
    with _stdout_to_stderr(ctx.dry_run):
        try:
            for name in steps:
                log.info("event=step name=%s run_id=%s dry_run=%s", name, ctx.state.run_id, ctx.dry_run)
                BY_NAME[name].run(ctx)
        except BaseException as exc:
            reason = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
            ctx.release(ctx.state.resources[start:], keep_hosting=False, reason=reason)
            raise
        outcomes = ctx.release(ctx.state.resources[start:], keep_hosting=ctx.keep_endpoint, reason="end_of_run")
        ctx.say(_summary(ctx, steps, outcomes))
        if any(o.action == "failed" for o in outcomes):
            raise StepError("the run finished but could not release everything: see the event=still_billing lines")
    if ctx.aws.dry_run is not None:
        print(ctx.aws.dry_run.dump(), flush=True)
    return ctx


def check_plan(cfg: DeployConfig, steps: list[str]) -> None:
    """The rules that depend on which steps run (``deploy.refusals.plan_refusals``), before any of them."""
    refused = refusals.plan_refusals(cfg, steps)
    if refused:
        raise ConfigError("\n".join([f"invalid deploy configuration for the steps {','.join(steps)}:", *(f"  {r}" for r in refused)]))


def _summary(ctx: Context, steps: list[str], outcomes: list[Outcome]) -> str:
    """What ran, which optional services were on, and what is left billing (kept endpoints)."""
    services = [f"{k}={v}" for k, v in sorted(ctx.state.services.items())]
    endpoints = [o for o in outcomes if o.resource.kind == "endpoint"]
    kept = ",".join(o.resource.name for o in endpoints if o.action == "kept") or "none"
    deleted = sum(o.action == "deleted" for o in endpoints)
    return " ".join(
        [
            f"event=summary run_id={ctx.state.run_id} steps={','.join(steps)}",
            *services,
            f"endpoints_deleted={deleted} endpoints_kept={kept}",
        ]
    )


@contextlib.contextmanager
def _stdout_to_stderr(active: bool) -> Iterator[None]:
    """At the file-descriptor level: the SDK prints through handlers that hold the original stdout."""
    if not active:
        yield
        return
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def context(
    cfg: DeployConfig, *, run_id: str | None = None, new_run: bool = False, dry_run: bool = False, yes: bool = False, **options: Any
) -> Context:
    """What the notebook and the CLI both start from: the named run, a new one, or the latest."""
    if run_id is not None:
        check_run_id(run_id)
    if dry_run:
        state = RunState(run_id=run_id or "dry-run")
    elif new_run and run_id is None:
        state = RunState(run_id=new_run_id())
    else:
        state = load_state(cfg.runs_dir, run_id)
    aws = Aws.connect(cfg.region, dry_run=dry_run, cuda_compat=cfg.image_cuda_compat)
    return Context(cfg=cfg, aws=aws, state=state, yes=yes, **options)


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m deploy.pipeline", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("steps", nargs="+", choices=[*BY_NAME, "all"], help="steps to run, in order")
    parser.add_argument("--run-id", default=None, help="continue this run (default: the latest; a new one for 'all' and 'data')")
    parser.add_argument("--dry-run", action="store_true", help="print the create requests as JSON; send nothing")
    parser.add_argument("--validate-only", action="store_true", help="check the configuration and the arguments, then stop")
    parser.add_argument("--yes", action="store_true", help="allow billable endpoints")
    parser.add_argument("--keep-endpoint", action="store_true", help="keep this run's endpoints at the end (cleanup deletes them later)")
    parser.add_argument("--data", default=None, help="data set: a folder of class folders, train/valid/test folders, or a zip path/URL")
    parser.add_argument("--pretrained-dir", type=Path, default=None, help="folder with <model>.safetensors (skips the download)")
    parser.add_argument("--sample", type=Path, default=None, help="image to send to the endpoint (default: the first test image)")
    parser.add_argument("--all-runs", action="store_true", help="cleanup: every run of this project, not only this one")
    parser.add_argument("--version", type=int, default=None, help="models/approve/reject/promote: a version of the registry group")
    parser.add_argument("--endpoint", dest="endpoint_name", default=None, help="promote/drift/retire: the endpoint's name")
    parser.add_argument("--reason", default=None, help="approve/reject: the approval description")
    optional = ",".join(s.name for s in STEPS if s.optional)
    parser.add_argument("--verbose", action="store_true", help="also the SageMaker SDK's and botocore's own messages, and debug lines")
    parser.add_argument("--with", dest="optional", default="", help=f"with 'all' (or 'check'): comma-separated {optional}")
    config_module.add_arguments(parser)
    return parser


def resolve_steps(args: argparse.Namespace) -> list[str]:
    """``all`` expanded (its data step only with --data; a dry run uses placeholders), endpoints held without --yes."""
    if "all" not in args.steps:
        return list(args.steps)
    optional = _optional(args)
    steps = [s.name for s in STEPS if s.in_all and (s.name != "data" or args.data)] + optional
    if not args.yes and not args.dry_run:  # everything up to the trained model; endpoints wait for --yes
        held = [s for s in steps if BY_NAME[s].billable or s in NEEDS_ENDPOINT]
        steps = [s for s in steps if s not in held]
        print(f"event=skipped steps={','.join(held)} reason=billable_needs_--yes", file=sys.stderr)
    return steps


def _optional(args: argparse.Namespace) -> list[str]:
    optional = [s for s in args.optional.split(",") if s]
    unknown = [s for s in optional if s not in BY_NAME or not BY_NAME[s].optional]
    if unknown:
        raise StepError(f"--with takes {', '.join(s.name for s in STEPS if s.optional)}; got {unknown}")
    return optional


def resolve_plan(args: argparse.Namespace, steps: list[str]) -> list[str]:
    """What the pre-flight checks: the steps, or for ``check`` alone those of ``all`` (and ``--with``)."""
    if steps != ["check"]:
        return steps
    return [s.name for s in STEPS if s.in_all] + _optional(args)


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s", stream=sys.stderr)
    quiet.quiet_sdk(verbose=args.verbose)
    try:
        return _main(args)
    finally:
        quiet.folded()


def _main(args: argparse.Namespace) -> int:
    try:
        steps = resolve_steps(args)
        cfg = config_module.from_args(args)
        if args.run_id is not None:
            check_run_id(args.run_id)
        billable = [s for s in steps if BY_NAME[s].billable]
        if billable and not args.yes and not args.dry_run:
            raise StepError(f"steps {billable} create billable resources: pass --yes (or --dry-run)")
        check_plan(cfg, steps)
        if args.validate_only:
            print(f"event=config_ok region={cfg.region} steps={','.join(steps)}", file=sys.stderr)
            return 0
        options = {"data": args.data, "pretrained_dir": args.pretrained_dir, "sample": args.sample, "all_runs": args.all_runs}
        options.update(version=args.version, endpoint_name=args.endpoint_name, reason=args.reason)
        new_run = "all" in args.steps or steps[:1] == ["data"]
        ctx = context(
            cfg, run_id=args.run_id, new_run=new_run, dry_run=args.dry_run, yes=args.yes, keep_endpoint=args.keep_endpoint, **options
        )
        with signals.raising():
            run(steps, ctx, plan=resolve_plan(args, steps))
    except drift_step.DriftFound as exc:
        print(f"error: {exc}", file=sys.stderr)
        return drift_step.DriftFound.exit_code
    except (ConfigError, StepError, RequestRefused, RunIdError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (ClientError, BotoCoreError) as exc:
        print(f"error: AWS: {exc}", file=sys.stderr)
        return 1
    except signals.Interrupted as exc:
        print(f"event=interrupted signal={exc}", file=sys.stderr)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
