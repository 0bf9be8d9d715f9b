"""Nothing left billing: failures, Ctrl-C, SIGTERM, the end of a run, and cleanup.

The emulator finishes every job and endpoint at once; tests/aws/gate.py holds them in progress
(the status AWS shows while the work runs) in front of it. The signal tests send a real SIGINT,
SIGTERM or SIGHUP to a real ``python -m deploy.pipeline`` while it waits on such a resource, then read
what is left from the emulator itself.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import boto3
import pytest

from deploy import cleanup, pipeline
from deploy.config import load_config
from deploy.state import RunState
from deploy.tags import tag_list
from tests.aws.conftest import BUCKET, REGION, ROLE
from tests.aws.gate import Gate
from tests.helpers import REPO_ROOT

GOOD = ["--region", REGION, "--role-arn", ROLE, "--bucket", BUCKET]
MODEL_DATA = f"s3://{BUCKET}/seed/model.tar.gz"


def _seed_run(runs, run_id: str) -> None:
    """A run whose data and final model exist: what the steps before deploy and train leave."""
    channels = {c: f"s3://{BUCKET}/data/{c}/" for c in ("train", "validation", "test")}
    channels["pretrained"] = f"s3://{BUCKET}/pretrained/"
    RunState(run_id=run_id, channels=channels, final_model_data=MODEL_DATA, best_model_data=MODEL_DATA).save(runs)


def _left(run_id: str) -> dict[str, list[str]]:
    """The run's endpoints, endpoint configs and models, read from the emulator itself (not through the gate)."""
    sm = boto3.client("sagemaker", region_name=REGION, endpoint_url=os.environ["AWS_ENDPOINT_URL_EMULATOR"])
    out: dict[str, list[str]] = {}
    for call, key, name in (
        ("list_endpoints", "Endpoints", "EndpointName"),
        ("list_endpoint_configs", "EndpointConfigs", "EndpointConfigName"),
        ("list_models", "Models", "ModelName"),
    ):
        out[key] = [item[name] for item in getattr(sm, call)()[key] if run_id in item[name]]
    return out


@pytest.fixture(autouse=True)
def _emulator_url(aws, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL_EMULATOR", aws.url)


def _start(gate: Gate, tmp_path, *args: str) -> subprocess.Popen:
    env = {
        **os.environ,
        "AWS_ENDPOINT_URL": gate.url,
        "IC_RUNS_DIR": str(tmp_path / "runs"),
        "IC_STREAM_LOGS": "false",
        "IC_TEARDOWN_POLL_S": "0.2",
    }
    return subprocess.Popen(
        [sys.executable, "-m", "deploy.pipeline", *args, *GOOD],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _when_waiting(gate: Gate, process: subprocess.Popen, operation: str, key: str, name: str, timeout: float = 120) -> None:
    """Returns once the pipeline polls ``name``'s status: it is inside the SDK's wait."""
    deadline = time.monotonic() + timeout
    while not any(body.get(key) == name for body in gate.calls(operation)):
        if process.poll() is not None or time.monotonic() > deadline:
            out, err = process.communicate(timeout=10)
            raise AssertionError(f"never waited on {name}: rc={process.returncode}\n{out[-2000:]}\n{err[-3000:]}")
        time.sleep(0.1)


def test_ctrl_c_while_training_stops_the_job_and_deletes_the_endpoint_of_an_earlier_step(gate, tmp_path):
    _seed_run(tmp_path / "runs", "sigint")
    gate.hold("training-job", r"^ic-final-sigint-", "InProgress")
    process = _start(gate, tmp_path, "deploy", "train", "--run-id", "sigint", "--yes")
    _when_waiting(gate, process, "DescribeTrainingJob", "TrainingJobName", "ic-final-sigint-1")
    assert _left("sigint")["Endpoints"] == ["ic-endpoint-sigint-1"]  # billing while the job runs
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 130, err[-3000:]
    assert gate.calls("StopTrainingJob") == [{"TrainingJobName": "ic-final-sigint-1"}]
    assert _left("sigint") == {"Endpoints": [], "EndpointConfigs": [], "Models": []}
    assert "event=teardown_done reason=interrupted stopped=1 deleted=3" in out
    sm = boto3.client("sagemaker", region_name=REGION)
    assert sm.describe_training_job(TrainingJobName="ic-final-sigint-1")["TrainingJobStatus"] == "Stopped"
    assert cleanup.find(sm, "sigint") == []  # nothing of the run left running, by tag either


def test_sigterm_while_the_endpoint_is_created_waits_until_it_can_be_deleted(gate, tmp_path):
    _seed_run(tmp_path / "runs", "sigterm")
    gate.hold("endpoint", r"^ic-endpoint-sigterm-", "Creating", release_after=2)
    process = _start(gate, tmp_path, "deploy", "--run-id", "sigterm", "--yes")
    _when_waiting(gate, process, "DescribeEndpoint", "EndpointName", "ic-endpoint-sigterm-1")
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 143, err[-3000:]
    assert "event=teardown_waiting kind=endpoint name=ic-endpoint-sigterm-1 status=Creating" in out
    assert len(gate.calls("DeleteEndpoint")) >= 2  # refused while Creating, then accepted
    assert _left("sigterm") == {"Endpoints": [], "EndpointConfigs": [], "Models": []}
    assert "event=teardown_done reason=interrupted stopped=0 deleted=3" in out


def test_sighup_a_closed_terminal_while_a_transform_job_runs_stops_it_and_deletes_its_model(gate, tmp_path):
    """SIGHUP: what a terminal closed under the run sends; the same teardown as Ctrl-C, exit 129."""
    _seed_run(tmp_path / "runs", "sighup")
    gate.hold("transform-job", r"^ic-transform-sighup-", "InProgress")
    process = _start(gate, tmp_path, "transform", "--run-id", "sighup", "--yes")
    _when_waiting(gate, process, "DescribeTransformJob", "TransformJobName", "ic-transform-sighup-1")
    process.send_signal(signal.SIGHUP)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 129, err[-3000:]
    assert gate.calls("StopTransformJob") == [{"TransformJobName": "ic-transform-sighup-1"}]
    assert _left("sighup")["Models"] == []
    assert "event=interrupted signal=SIGHUP" in err
    assert "event=teardown_done reason=interrupted stopped=1" in out


def _context(tmp_path, run_id: str, **options):
    cfg = load_config(
        overrides={"region": REGION, "role_arn": ROLE, "bucket": BUCKET, "runs_dir": str(tmp_path / "runs"), "stream_logs": False},
        environ={},
    )
    _seed_run(cfg.runs_dir, run_id)
    return pipeline.context(cfg, run_id=run_id, yes=True, **options)


def test_a_failing_later_step_deletes_the_endpoint(gate, tmp_path, capsys):
    ctx = _context(tmp_path, "inproc", sample=tmp_path / "missing.png")
    with pytest.raises(FileNotFoundError):
        pipeline.run(["deploy", "query"], ctx)
    assert _left("inproc") == {"Endpoints": [], "EndpointConfigs": [], "Models": []}
    assert "event=teardown_done reason=failed stopped=0 deleted=3" in capsys.readouterr().out
    assert ctx.state.endpoint is None and ctx.state.model_name is None


def test_the_end_of_a_run_deletes_its_endpoint_unless_kept(gate, aws, tmp_path, capsys):
    sample = tmp_path / "sample.png"
    sample.write_bytes(b"not looked at by the emulator")
    answer = '{"predictions": [{"label": "cat", "probability": 0.9, "top_k": [{"label": "cat", "index": 0, "probability": 0.9}]}]}'
    aws.queue_endpoint_results([answer, answer])
    ctx = _context(tmp_path, "inproc", sample=sample)
    pipeline.run(["deploy", "query"], ctx)
    assert _left("inproc")["Endpoints"] == []
    assert "event=summary run_id=inproc steps=deploy,query" in capsys.readouterr().out
    ctx.keep_endpoint = True
    pipeline.run(["deploy", "query"], ctx)  # a second attempt: new names
    assert _left("inproc")["Endpoints"] == ["ic-endpoint-inproc-2"]
    assert "action=kept" in capsys.readouterr().out
    ctx.keep_endpoint = False
    pipeline.run(["cleanup"], ctx)
    assert _left("inproc") == {"Endpoints": [], "EndpointConfigs": [], "Models": []}


def _jobs(sm, run_id: str) -> None:
    """One job of each kind, created directly, tagged with ``run_id``."""
    tags = tag_list(run_id)
    common = {"RoleArn": ROLE, "StoppingCondition": {"MaxRuntimeInSeconds": 3600}}
    algorithm = {"TrainingImage": "img", "TrainingInputMode": "File"}
    sm.create_training_job(
        TrainingJobName=f"ic-final-{run_id}-1",
        AlgorithmSpecification=algorithm,
        OutputDataConfig={"S3OutputPath": f"s3://{BUCKET}/o"},
        ResourceConfig={"InstanceType": "ml.m5.xlarge", "InstanceCount": 1, "VolumeSizeInGB": 10},
        Tags=tags,
        **common,
    )
    sm.create_hyper_parameter_tuning_job(
        HyperParameterTuningJobName=f"ic-tune-{run_id}-1",
        HyperParameterTuningJobConfig={
            "Strategy": "Random",
            "ResourceLimits": {"MaxNumberOfTrainingJobs": 2, "MaxParallelTrainingJobs": 1},
        },
        TrainingJobDefinition={
            "AlgorithmSpecification": algorithm,
            "RoleArn": ROLE,
            "OutputDataConfig": {"S3OutputPath": f"s3://{BUCKET}/o"},
            "ResourceConfig": {"InstanceType": "ml.m5.xlarge", "InstanceCount": 1, "VolumeSizeInGB": 10},
            "StoppingCondition": {"MaxRuntimeInSeconds": 3600},
        },
        Tags=tags,
    )
    sm.create_model(ModelName=f"ic-model-{run_id}-1", PrimaryContainer={"Image": "img"}, ExecutionRoleArn=ROLE, Tags=tags)
    sm.create_transform_job(
        TransformJobName=f"ic-transform-{run_id}-1",
        ModelName=f"ic-model-{run_id}-1",
        TransformInput={"DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": f"s3://{BUCKET}/i"}}},
        TransformOutput={"S3OutputPath": f"s3://{BUCKET}/o"},
        TransformResources={"InstanceType": "ml.m5.xlarge", "InstanceCount": 1},
        Tags=tags,
    )
    sm.create_processing_job(
        ProcessingJobName=f"ic-clarify-{run_id}-1",
        ProcessingResources={"ClusterConfig": {"InstanceCount": 1, "InstanceType": "ml.m5.xlarge", "VolumeSizeInGB": 10}},
        AppSpecification={"ImageUri": "img"},
        Tags=tags,
        **common,
    )


def test_cleanup_stops_running_jobs_of_every_kind_and_touches_nothing_else(gate, tmp_path, capsys):
    sm = boto3.client("sagemaker", region_name=REGION)
    for run_id in ("mine", "theirs"):
        _jobs(sm, run_id)
    for kind in ("training-job", "hyper-parameter-tuning-job", "transform-job", "processing-job"):
        gate.hold(kind, r"-(mine|theirs)-1$", "InProgress")
    ctx = _context(tmp_path, "mine")
    pipeline.run(["cleanup"], ctx)
    stopped = {
        op: [next(iter(b.values())) for b in gate.calls(op)]
        for op in ("StopTrainingJob", "StopHyperParameterTuningJob", "StopTransformJob", "StopProcessingJob")
    }
    assert stopped == {
        "StopTrainingJob": ["ic-final-mine-1"],
        "StopHyperParameterTuningJob": ["ic-tune-mine-1"],
        "StopTransformJob": ["ic-transform-mine-1"],
        "StopProcessingJob": ["ic-clarify-mine-1"],
    }
    assert _left("mine")["Models"] == [] and _left("theirs")["Models"] == ["ic-model-theirs-1"]
    assert "event=teardown_done reason=cleanup stopped=4 deleted=1" in capsys.readouterr().out
    assert cleanup.find(sm, "mine") == [] and len(cleanup.find(sm, "theirs")) == 5
