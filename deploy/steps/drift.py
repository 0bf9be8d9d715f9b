"""Compare an endpoint's captured traffic with the test set of the run whose model it serves (``deploy.drift``).

    python -m deploy.pipeline drift --endpoint prod     # exit 3 when a distance passes drift.threshold

The report is ``deploy/runs/<run>/reports/drift-<endpoint>.html``, beside the training reports.
"""

from __future__ import annotations

from pathlib import Path

from botocore.exceptions import ClientError

from deploy import drift, results, rollout
from deploy.context import Context, StepError
from deploy.state import load_state
from deploy.steps.promote import describe, endpoint_argument

TEST_SAMPLE = 200  # test images whose format and size are read (headers only)


class DriftFound(StepError):
    """Drift above the configured threshold: the CLI exits 3, so a scheduled job can alert."""

    exit_code = 3


def _serving_run(ctx: Context, endpoint: str) -> str:
    """The run whose model the endpoint serves (its registry version's metadata); this run when unknown."""
    sm = ctx.aws.client("sagemaker")
    described = describe(sm, endpoint)
    if described is None:
        raise StepError(f"there is no endpoint {endpoint}")
    try:
        variants = sm.describe_endpoint_config(EndpointConfigName=described["EndpointConfigName"]).get("ProductionVariants", [])
        package = sm.describe_model(ModelName=variants[0]["ModelName"]).get("PrimaryContainer", {}).get("ModelPackageName")
        metadata = sm.describe_model_package(ModelPackageName=package).get("CustomerMetadataProperties") or {} if package else {}
        if metadata.get("run_id"):
            return str(metadata["run_id"])
    except (ClientError, IndexError, KeyError):
        pass
    return ctx.state.run_id


def _live(ctx: Context, endpoint: str) -> drift.Traffic:
    """The newest captured records, at most ``drift.max_records``."""
    s3, prefix = ctx.aws.client("s3"), rollout.capture_prefix(ctx.cfg.s3_root, endpoint) + "/"
    keys = sorted(k for k in results.list_keys(s3, prefix) if k.endswith(".jsonl"))
    if not keys:
        raise StepError(f"nothing captured under {prefix}: is capture on (capture.enabled) and has {endpoint} been called?")
    bucket, _ = results.split_s3(prefix)
    traffic = drift.Traffic()
    for key in reversed(keys):
        lines = s3.get_object(Bucket=bucket, Key=key)["Body"].read().decode().splitlines()
        drift.read_lines(reversed(lines), traffic, ctx.cfg.drift.max_records)
        if traffic.predictions + traffic.unreadable >= ctx.cfg.drift.max_records:
            break
    return traffic


def _test_images(ctx: Context, traffic: drift.Traffic, test_uri: str | None) -> None:
    """Format and size of up to ``TEST_SAMPLE`` test images (headers only)."""
    if not test_uri:
        return
    s3 = ctx.aws.client("s3")
    bucket, _ = results.split_s3(test_uri)
    keys = [k for k in results.list_keys(s3, test_uri.rstrip("/") + "/") if not k.endswith("/")]
    step = max(1, len(keys) // TEST_SAMPLE)
    for key in keys[::step][:TEST_SAMPLE]:
        facts = drift.image_facts(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
        if facts:
            traffic.formats[facts[0]] += 1
            traffic.sizes.append(facts[1])


def step_drift(ctx: Context) -> None:
    endpoint = endpoint_argument(ctx, "drift")
    if ctx.dry_run:  # reads only
        return
    run_id = _serving_run(ctx, endpoint)
    run = load_state(ctx.cfg.runs_dir, run_id) if run_id != ctx.state.run_id else ctx.state
    report_dir = ctx.cfg.runs_dir / run_id / "reports" / "output"
    try:
        test = drift.reference(report_dir)
    except FileNotFoundError as exc:
        raise StepError(f"{exc}: python -m deploy.pipeline reports --run-id {run_id}") from None
    _test_images(ctx, test, run.channels.get("test"))
    verdict = drift.compare(_live(ctx, endpoint), test, ctx.cfg.drift.threshold)
    page = Path(ctx.run_dir) / "reports" / f"drift-{endpoint}.html"
    page.parent.mkdir(parents=True, exist_ok=True)
    page.write_text(drift.report_html(endpoint, verdict))
    ctx.say(verdict.line(endpoint))
    ctx.say(f"event=drift_report endpoint={endpoint} file={page} reference_run={run_id}")
    if verdict.drifted:
        distances = ", ".join(f"{k} {verdict.distances[k]:.3f}" for k in verdict.drifted)
        raise DriftFound(f"{endpoint}'s traffic drifted from the test set ({distances} > {ctx.cfg.drift.threshold}): see {page}")
