"""Script mode: `train` runs a user's own script (tests/user_script/train.py) through sagemaker-training."""

from __future__ import annotations

import re
import signal
import subprocess
import time

import pytest
import torch

from image_classifier import params
from tests.helpers import USER_SCRIPT_DIR, failure_reason, read_json, run_train, script_mode_hps, train_env, write_job


def test_the_users_script_gets_the_toolkits_environment(script_job):
    base, result = script_job
    log = result.stdout
    assert "event=script_mode program=train.py processes_per_host=1 torchrun=false" in log  # our launcher (this worktree's)
    assert "Requirement already satisfied: numpy" in log  # source_dir's requirements.txt, installed by the toolkit
    assert "user_script rank=0 world_size=1 images=1397 greeting=hello" in log
    assert "event=epoch" not in log and "event=preflight" not in log  # our trainer did not run
    received = read_json(base / "model" / "received.json")
    assert received["hps"] == {"greeting": "hello"}  # sagemaker_* keys are the toolkit's, not the script's
    assert received["env"] == {
        "SM_NUM_GPUS": "0",
        "SM_CHANNEL_TRAIN": str(base / "input" / "data" / "train"),
        "SM_MODEL_DIR": str(base / "model"),
        "SM_STUDIO_LOCAL_MODE": None,  # our switch for the toolkit, not visible to the script
    }
    assert (base / "code" / "train.py").read_text() == (USER_SCRIPT_DIR / "train.py").read_text()  # source_dir -> /opt/ml/code
    assert (base / "output" / "success").exists() and not (base / "output" / "failure").exists()
    state = torch.load(base / "model" / "model.pt", weights_only=True)
    assert state["weight"].shape == (10, 64)


@pytest.mark.slow
def test_two_processes_with_torch_distributed(tmp_path, digits_data, script_job):
    """distribution={"torch_distributed": {"enabled": True}}: our torchrun runs the script, one process each."""
    hps = script_mode_hps(sagemaker_torch_distributed_enabled="true", **{params.PROCESSES_PER_HOST_PARAM: "2"})
    result = run_train(tmp_path, digits_data, hps)
    assert result.returncode == 0, result.stdout[-4000:]
    assert "event=launch nodes=1 node_rank=0 procs_per_node=2 master=127.0.0.1" in result.stdout
    assert sorted(re.findall(r"user_script rank=(\d) world_size=(\d)", result.stdout)) == [("0", "2"), ("1", "2")]
    assert read_json(tmp_path / "model" / "received.json")["world_size"] == 2
    two = torch.load(tmp_path / "model" / "model.pt", weights_only=True)
    one = torch.load(script_job[0] / "model" / "model.pt", weights_only=True)
    for name in ("weight", "bias"):  # the ranks' shares all-reduced: the same centroids as one process
        torch.testing.assert_close(two[name], one[name])


def test_a_failing_script_leaves_the_toolkits_reason(tmp_path, digits_data):
    result = run_train(tmp_path, digits_data, script_mode_hps(then="fail"))
    assert result.returncode == 1
    reason = failure_reason(tmp_path)
    # the script's own line first, whatever the chunking of its stderr (the toolkit's text follows it)
    assert reason.startswith('ExecuteUserScriptError:\nExitCode 1\nErrorMessage "ValueError: the user script was asked to fail\n'), reason
    assert not (tmp_path / "output" / "success").exists()


def test_sigterm_reaches_the_script(tmp_path, digits_data):
    """SageMaker's SIGTERM (SIGKILL 30 s later) is passed on, so the script can save a checkpoint."""
    write_job(tmp_path, digits_data, script_mode_hps(then="wait_for_sigterm"))
    log = (tmp_path / "train.log").open("w+")
    job = subprocess.Popen(["train"], env=train_env(tmp_path), stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path)
    try:
        deadline = time.monotonic() + 120
        while "user_script waiting" not in (tmp_path / "train.log").read_text():
            assert job.poll() is None and time.monotonic() < deadline, (tmp_path / "train.log").read_text()[-3000:]
            time.sleep(0.2)
        job.send_signal(signal.SIGTERM)
        assert job.wait(timeout=30) == 0
    finally:
        if job.poll() is None:
            job.kill()
        log.close()
    assert (tmp_path / "model" / "checkpoint-on-sigterm").read_text() == "saved"
    assert "event=signal_forwarded signal=SIGTERM" in (tmp_path / "train.log").read_text()


@pytest.mark.parametrize(
    ("key", "name"), [("sagemaker_mpi_enabled", "mpi"), ("sagemaker_distributed_dataparallel_enabled", "smdistributed")]
)
def test_a_distribution_without_its_launcher_is_refused(tmp_path, digits_data, key, name):
    result = run_train(tmp_path, digits_data, script_mode_hps(**{key: "true"}))
    assert result.returncode == 1
    reason = failure_reason(tmp_path)
    assert f"distribution {name!r} is not supported by this image" in reason and "torch_distributed" in reason
