"""Debugger, Profiler and Clarify on an account that is refused them: auto carries on, on fails, off never asks.

The refusal a closed service returns cannot be observed from here, so deploy.services judges the
kind of error, never its text: tests/aws/gate.py answers with AWS's error shape and several codes
and messages, some of which must lead to the retry without the services and some never.
"""

from __future__ import annotations

import io
import json
import tarfile

import boto3
import pytest
from botocore.exceptions import ClientError

from deploy import pipeline, services
from deploy.config import load_config
from deploy.context import StepError
from deploy.state import RunState
from tests.aws.conftest import BUCKET, REGION, ROLE
from tests.aws.gate import Gate

MODEL_DATA = f"s3://{BUCKET}/seed/model.tar.gz"
CLASSES = ["ant", "bee", "cat"]
DEBUGGER_CLOSED = "SageMaker Debugger is no longer available to new customers."
CLARIFY_CLOSED = "SageMaker Clarify is not available for this account."


def _context(tmp_path, **overrides):
    cfg = load_config(
        overrides={"region": REGION, "role_arn": ROLE, "bucket": BUCKET, "runs_dir": str(tmp_path), "stream_logs": False, **overrides},
        environ={},
    )
    channels = {c: f"s3://{BUCKET}/data/{c}/" for c in ("train", "validation", "test")}
    RunState(run_id="closed", channels=channels, final_model_data=MODEL_DATA).save(cfg.runs_dir)
    return pipeline.context(cfg, run_id="closed", yes=True)


def _seed_model_and_images() -> None:
    """The two things Clarify's step reads before its job: the model card inside model.tar.gz, and test images."""
    card = json.dumps({"classes": CLASSES}).encode()
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        info = tarfile.TarInfo("model_card.json")
        info.size = len(card)
        archive.addfile(info, io.BytesIO(card))
    s3 = boto3.client("s3", region_name=REGION)
    s3.put_object(Bucket=BUCKET, Key="seed/model.tar.gz", Body=buffer.getvalue())
    for name in CLASSES:
        s3.put_object(Bucket=BUCKET, Key=f"data/test/{name}/0.png", Body=b"png")


def _debugger_refused(gate: Gate) -> None:
    gate.refuse("CreateTrainingJob", lambda body: "DebugHookConfig" in body, "ValidationException", DEBUGGER_CLOSED)


def test_auto_trains_without_the_refused_services_and_says_so(gate, tmp_path, capsys):
    """The text is not read: every ``auto`` part of the refused request goes (both here); ``on`` keeps one (below)."""
    _debugger_refused(gate)
    ctx = pipeline.run(["train"], _context(tmp_path))
    first, second = gate.calls("CreateTrainingJob")
    assert "DebugRuleConfigurations" in first and "DebugHookConfig" not in second and "DebugRuleConfigurations" not in second
    assert "ProfilerRuleConfigurations" in first and "ProfilerRuleConfigurations" not in second
    assert first["TrainingJobName"] == second["TrainingJobName"] == "ic-final-closed-1"  # refused: the name was never taken
    out = capsys.readouterr().out
    assert "event=service_unavailable service=debugger mode=auto action=continue_without error=ValidationException" in out
    (summary,) = [line for line in out.splitlines() if line.startswith("event=summary")]
    assert "debugger=refused" in summary and "profiler=refused" in summary
    assert ctx.state.services == {"debugger": "refused", "profiler": "refused"}


def test_on_fails_with_the_services_message(gate, tmp_path):
    _debugger_refused(gate)
    with pytest.raises(ClientError, match="no longer available to new customers"):
        pipeline.run(["train"], _context(tmp_path, debugger="on", profiler="off"))
    assert len(gate.calls("CreateTrainingJob")) == 1  # nothing auto to leave out: no retry


def test_off_never_asks(gate, tmp_path):
    ctx = pipeline.run(["train"], _context(tmp_path, debugger="off", profiler="off"))
    (sent,) = gate.calls("CreateTrainingJob")
    assert "DebugHookConfig" not in sent and "ProfilerRuleConfigurations" not in sent
    assert ctx.state.services == {"debugger": "off", "profiler": "off"}


def test_a_refused_clarify_skips_the_step_with_one_line_naming_the_alternative(gate, tmp_path, capsys):
    _seed_model_and_images()
    gate.refuse(
        "CreateProcessingJob", lambda body: "clarify" in body["AppSpecification"]["ImageUri"], "AccessDeniedException", CLARIFY_CLOSED
    )
    ctx = pipeline.run(["clarify"], _context(tmp_path))
    out = capsys.readouterr().out
    skipped = [line for line in out.splitlines() if line.startswith("event=clarify_skipped")]
    assert skipped == [
        f"event=clarify_skipped reason=service_refused alternative={services.CLARIFY_ALTERNATIVE.replace('<run>', 'closed')!r}"
    ]
    assert ctx.state.services["clarify"] == "refused"
    assert "event=teardown kind=model name=ic-model-closed-1 action=deleted" in out  # the model it made is gone too


def test_a_clarify_job_failing_as_closed_is_skipped_too(gate, tmp_path, capsys):
    _seed_model_and_images()
    gate.hold("processing-job", r"^ic-clarify-closed-", "Failed", FailureReason=f"ClientError: {CLARIFY_CLOSED}")
    pipeline.run(["clarify"], _context(tmp_path))
    assert "event=clarify_skipped reason=service_refused" in capsys.readouterr().out


def test_clarify_on_fails_and_off_never_asks(gate, tmp_path):
    _seed_model_and_images()
    gate.refuse("CreateProcessingJob", lambda body: True, "AccessDeniedException", CLARIFY_CLOSED)
    with pytest.raises(StepError, match="SageMaker refused Clarify"):
        pipeline.run(["clarify"], _context(tmp_path, clarify="on"))
    pipeline.run(["clarify"], _context(tmp_path / "off", clarify="off"))
    assert len(gate.calls("CreateProcessingJob")) == 1


REFUSED_AT_CREATION = [
    ("AccessDeniedException", "User is not authorized to perform: sagemaker:CreateTrainingJob with DebugHookConfig"),
    ("OptInRequired", "The AWS Access Key Id needs a subscription for the service"),
]  # ValidationException: test_auto_trains_without_the_refused_services_and_says_so; more codes: test_what_counts_as_...
NEVER_RETRIED = [
    ("ThrottlingException", "Rate exceeded", 400),
    ("ResourceLimitExceeded", "The account-level service limit 'ml.g5.xlarge for training job usage' is 0 Instances", 400),
    ("ServiceUnavailable", "Debugger is no longer available to new customers", 503),  # a closed-sounding text: still no retry
]


@pytest.mark.parametrize(("code", "message"), REFUSED_AT_CREATION)
def test_a_refusal_at_creation_is_retried_once_without_the_auto_services_with_awss_message(gate, tmp_path, capsys, code, message):
    gate.refuse("CreateTrainingJob", lambda body: "DebugHookConfig" in body or "ProfilerRuleConfigurations" in body, code, message)
    ctx = pipeline.run(["train"], _context(tmp_path, profiler="auto"))
    first, second = gate.calls("CreateTrainingJob")
    assert "DebugHookConfig" in first and "ProfilerRuleConfigurations" in first
    assert not {"DebugHookConfig", "DebugRuleConfigurations", "ProfilerRuleConfigurations"} & set(second)
    assert second.get("ProfilerConfig", {}).get("DisableProfiler") in (True, None)
    out = capsys.readouterr().out
    for name in ("debugger", "profiler"):
        assert f"event=service_unavailable service={name} mode=auto action=continue_without error={code} message={message!r}" in out
    assert ctx.state.services == {"debugger": "refused", "profiler": "refused"}


@pytest.mark.parametrize(("code", "message", "status"), NEVER_RETRIED)
def test_throttling_quotas_and_server_errors_are_never_retried_without_the_services(gate, tmp_path, code, message, status):
    gate.refuse("CreateTrainingJob", lambda body: True, code, message, status=status)
    with pytest.raises(ClientError) as raised:
        pipeline.run(["train"], _context(tmp_path))
    assert raised.value.response["Error"]["Code"] == code
    assert len(gate.calls("CreateTrainingJob")) == 1


def test_a_refused_retry_is_the_users_error_with_awss_message(gate, tmp_path, capsys):
    gate.refuse("CreateTrainingJob", lambda body: "DebugHookConfig" in body, "ValidationException", DEBUGGER_CLOSED)
    gate.refuse("CreateTrainingJob", lambda body: "DebugHookConfig" not in body, "AccessDeniedException", "not authorized: iam:PassRole")
    with pytest.raises(ClientError, match="iam:PassRole"):
        pipeline.run(["train"], _context(tmp_path))
    assert len(gate.calls("CreateTrainingJob")) == 2
    out = capsys.readouterr().out
    assert "event=service_retry_refused without=debugger,profiler error=AccessDeniedException message='not authorized: iam:PassRole'" in out


def test_an_on_service_is_kept_in_the_retry_and_only_auto_ones_are_dropped(gate, tmp_path):
    gate.refuse("CreateTrainingJob", lambda body: "ProfilerRuleConfigurations" in body, "ValidationException", "Profiler rules closed")
    ctx = pipeline.run(["train"], _context(tmp_path, debugger="on"))
    _, second = gate.calls("CreateTrainingJob")
    assert "DebugHookConfig" in second and "ProfilerRuleConfigurations" not in second
    assert ctx.state.services == {"debugger": "on", "profiler": "refused"}


@pytest.mark.parametrize(
    ("code", "status", "retried"),
    [
        ("ValidationException", 400, True),
        ("AccessDeniedException", 400, True),
        ("AccessDenied", 403, True),
        ("OptInRequired", 403, True),
        ("SubscriptionRequiredException", 400, True),
        ("UnsupportedOperation", 400, True),
        ("ThrottlingException", 400, False),
        ("ResourceLimitExceeded", 400, False),
        ("ServiceQuotaExceededException", 402, False),
        ("InternalFailure", 500, False),
        ("UnsupportedOperationException", 400, True),
        ("ValidationException", 503, False),  # a 5xx is the service failing, whatever its code
        ("ResourceInUse", 400, False),
    ],
)
def test_what_counts_as_a_refusal_at_creation(code, status, retried):
    error = ClientError(
        {"Error": {"Code": code, "Message": "any text"}, "ResponseMetadata": {"HTTPStatusCode": status}}, "CreateTrainingJob"
    )
    assert services.refused_at_creation(error) is retried
