"""A tuning run: one checkpoint folder per trial, ended trials' folders pruned, the image by digest.

Every trial of a tuning job is given the same checkpoint prefix, and SageMaker downloads all of
it when a trial starts. The trainer writes under ``<prefix>/<trial job name>/``
(``tests/contract/test_train_resume.py`` shows it) and empties its folder when it succeeds; the
tune step deletes the folders of trials that ended otherwise while it waits. Here the emulator
holds the tuning job and three trials, the gate (``tests/aws/gate.py``) shows them in progress,
completed or stopped, and S3 holds each trial's folder as SageMaker would have synced it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import boto3

from deploy.state import RunState
from image_classifier import params
from tests.aws import seeding
from tests.aws.conftest import BUCKET, REGION, ROLE, pinned_image
from tests.aws.gate import Gate
from tests.helpers import REPO_ROOT

RUN = "ckpt"
TUNING_JOB = f"ic-tune-{RUN}-1"
PREFIX = f"image-classifier/checkpoints/{RUN}/tune"
TRIALS = {f"{TUNING_JOB}-001-0a1b2c3d": "Completed", f"{TUNING_JOB}-002-1b2c3d4e": "InProgress", f"{TUNING_JOB}-003-2c3d4e5f": "Stopped"}


def _folders() -> dict[str, list[str]]:
    listed = boto3.client("s3", region_name=REGION).list_objects_v2(Bucket=BUCKET, Prefix=PREFIX + "/").get("Contents", [])
    out: dict[str, list[str]] = {}
    for item in listed:
        trial, name = item["Key"][len(PREFIX) + 1 :].split("/", 1)
        out.setdefault(trial, []).append(name)
    return out


def test_trials_checkpoint_apart_and_ended_ones_are_pruned_while_the_tuning_job_runs(aws, tmp_path):
    gate = Gate(aws.url)
    server = gate.serve()
    try:
        runs = tmp_path / "runs"
        channels = {c: f"s3://{BUCKET}/data/{c}/" for c in ("train", "validation")} | {"pretrained": f"s3://{BUCKET}/pretrained/"}
        RunState(run_id=RUN, channels=channels).save(runs)
        gate.hold("hyper-parameter-tuning-job", f"^{TUNING_JOB}$", "InProgress")
        for trial, status in TRIALS.items():
            seeding.training_job(trial, {"lr": "0.001"}, f"s3://{BUCKET}/seed")
            if status != "Completed":  # the emulator completes every job at once
                gate.hold("training-job", f"^{trial}$", status)
            # what SageMaker syncs from each trial's /opt/ml/checkpoints/<job name>/
            for name in (params.CHECKPOINT_PATTERN.format(epoch=3, step=0), params.BEST_WEIGHTS_FILE):
                seeding.put(f"{PREFIX}/{trial}/{name}", b"x" * 1000)
        env = {**os.environ, "AWS_ENDPOINT_URL": gate.url, "IC_RUNS_DIR": str(runs), "IC_WAIT_POLL_S": "0.2"}
        process = subprocess.Popen(
            [sys.executable, "-m", "deploy.pipeline", "tune", "--run-id", RUN, "--region", REGION, "--role-arn", ROLE, "--bucket", BUCKET],
            cwd=REPO_ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + 120
        while set(_folders()) != {f"{TUNING_JOB}-002-1b2c3d4e"}:
            assert time.monotonic() < deadline and process.poll() is None, (_folders(), process.poll())
            time.sleep(0.2)
        running = dict(_folders())  # the job is still in progress: what a trial starting now downloads
        gate.holds = [h for h in gate.holds if h.kind != "hyper-parameter-tuning-job"]  # the tuning job ends
        out, err = process.communicate(timeout=120)
    finally:
        server.shutdown()
    assert process.returncode == 0, err[-3000:]
    assert running == {f"{TUNING_JOB}-002-1b2c3d4e": ["best-model.safetensors", "checkpoint-0003-000000.pt"]}
    assert f"event=checkpoints_pruned job={TUNING_JOB}-001-0a1b2c3d status=Completed files=2 bytes=2000" in out
    assert f"event=checkpoints_pruned job={TUNING_JOB}-003-2c3d4e5f status=Stopped files=2 bytes=2000" in out
    assert f"event=tuning_done job={TUNING_JOB} status=Completed" in out
    (sent,) = gate.calls("CreateHyperParameterTuningJob")
    definition = sent["TrainingJobDefinition"]
    assert definition["CheckpointConfig"]["S3Uri"] == f"s3://{BUCKET}/{PREFIX}"  # one prefix, a folder per trial inside
    assert definition["AlgorithmSpecification"]["TrainingImage"] == pinned_image()  # the newest push, by digest
    assert RunState.model_validate_json((runs / RUN / "state.json").read_text()).image_uri == pinned_image()


def test_a_prune_that_aws_refuses_never_fails_the_step(aws):
    """Storage left behind must not stop (and so tear down) a tuning job: the refusal is said, the step goes on."""
    from deploy import checkpoints

    said: list[str] = []
    s3, sm = boto3.client("s3", region_name=REGION), boto3.client("sagemaker", region_name=REGION)
    assert checkpoints.prune(s3, sm, "s3://ic-no-such-bucket/checkpoints/r/tune", said.append) == 0
    assert said == ["event=checkpoints_prune_failed uri=s3://ic-no-such-bucket/checkpoints/r/tune error=NoSuchBucket action=continue"]
