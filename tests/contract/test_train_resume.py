"""Spot interruption: SIGTERM mid-epoch writes a checkpoint; the restarted job resumes from it.

The same job is then killed with SIGKILL mid-epoch (no chance to write anything: the kernel's
OOM killer, a lost host) and restarted once more: it resumes from the last epoch checkpoint.
Augmentation is seeded per (seed, epoch, sample), so the twice-interrupted job must end within
one accuracy point of the uninterrupted reference run.

It runs as a tuning trial does on SageMaker: a named job (``TRAINING_JOB_NAME``) whose
``/opt/ml/checkpoints`` also holds another trial's folder, with a newer checkpoint of the same
hyperparameters (downloaded from the prefix the trials share). The trial resumes its own, never
the other's, and empties its own folder once it has succeeded.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time

import pytest

from tests.helpers import DIGITS_HPS, read_json, run_train, train_env, write_job
from tests.reliability import FIGURES


def _wait_for(process, pattern, timeout=300):
    lines = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        lines.append(line)
        if re.search(pattern, line):
            return lines
    raise AssertionError(f"never saw {pattern!r}:\n{''.join(lines[-30:])}")


TRIAL = {"TRAINING_JOB_NAME": "ic-tune-resume-1-002-1b2c3d4e"}
OTHER_TRIAL = "ic-tune-resume-1-001-0a1b2c3d"


def _start(base):
    return subprocess.Popen(["train"], env=train_env(base, TRIAL), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.mark.slow
def test_sigterm_then_sigkill_mid_epoch_then_resume(tmp_path, digits_data, digits_job):
    # the precision the reference run measured and chose (amp=auto times both on this machine)
    chosen = re.search(r"event=amp_decision .* chosen=(\w+)", digits_job[1].stdout)
    hps = {**DIGITS_HPS, "log_interval": "1", "amp": "bf16" if chosen and chosen.group(1) == "bf16" else "off"}
    write_job(tmp_path, digits_data, hps)
    own, other = tmp_path / "checkpoints" / TRIAL["TRAINING_JOB_NAME"], tmp_path / "checkpoints" / OTHER_TRIAL
    other.mkdir(parents=True)
    for name in ("checkpoint-0003-000000.pt", "best-model.safetensors"):  # a finished epoch 3 of the same hyperparameters
        shutil.copy(digits_job[0] / "checkpoints" / name, other / name)
    process = _start(tmp_path)
    started = "".join(_wait_for(process, r"event=step epoch=2 step=3\b"))
    assert "event=resumed" not in started  # a fresh start: the other trial's newer checkpoint is not this job's
    signalled = time.monotonic()
    process.send_signal(signal.SIGTERM)
    rest, _ = process.communicate(timeout=120)
    grace = time.monotonic() - signalled
    assert process.returncode == 143, rest[-2000:]
    # the stop check runs every ~2 s of steps (training/epoch_watch.py), not every step: checkpoint and exit
    # still come inside SageMaker's 30 s before SIGKILL (typically ~4 s here, most of it the checkpoint's write)
    assert grace < 30, f"SIGTERM to exit took {grace:.1f} s"
    assert "event=interrupted signal=SIGTERM" in rest
    saved = sorted(p.name for p in own.glob("checkpoint-*.pt"))
    assert saved[-1].startswith("checkpoint-0001-") and not saved[-1].endswith("-000000.pt"), saved
    assert not (tmp_path / "output" / "failure").exists()
    assert not (tmp_path / "model" / "model.safetensors").exists()

    # resumed, then killed outright in the middle of its last epoch
    process = _start(tmp_path)
    step = int(saved[-1].split("-")[2].split(".")[0])
    before_kill = "".join(_wait_for(process, r"event=step epoch=3 step=3\b"))
    process.kill()
    process.communicate(timeout=60)
    assert process.returncode == -signal.SIGKILL
    assert f"event=resumed checkpoint={saved[-1]} epoch=1 step={step}" in before_kill
    assert "event=epoch epoch=1 " not in before_kill  # epoch 1 is not trained again
    newest = sorted(p.name for p in own.glob("checkpoint-*.pt"))[-1]
    assert newest == "checkpoint-0002-000000.pt", newest  # SIGKILL wrote nothing
    assert not list(own.glob(".*.tmp"))

    third = subprocess.run(
        ["train"], env=train_env(tmp_path, TRIAL), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600
    )
    assert third.returncode == 0, third.stdout[-3000:]
    assert "event=resumed checkpoint=checkpoint-0002-000000.pt epoch=2 step=0" in third.stdout
    # succeeded: its own folder emptied (S3 follows); the other trial's never looked at
    assert f"event=checkpoints_removed folder={TRIAL['TRAINING_JOB_NAME']} files=" in third.stdout and not own.exists()
    assert sorted(p.name for p in other.iterdir()) == ["best-model.safetensors", "checkpoint-0003-000000.pt"]
    assert "checkpoint_ignored" not in before_kill + third.stdout
    metrics = read_json(tmp_path / "output" / "data" / "metrics.json")
    assert [h["epoch"] for h in metrics["history"]] == [1, 2, 3]
    reference = read_json(digits_job[0] / "output" / "data" / "metrics.json")
    difference = metrics["final"]["test_acc"] - reference["final"]["test_acc"]
    FIGURES["resume"] = {
        "test_acc_interrupted": metrics["final"]["test_acc"],
        "test_acc_reference": reference["final"]["test_acc"],
        "difference_points": round(100 * difference, 2),
        "valid_acc_interrupted": [h["valid_acc"] for h in metrics["history"]],
        "valid_acc_reference": [h["valid_acc"] for h in reference["history"]],
    }
    assert abs(difference) <= 0.01, FIGURES["resume"]


@pytest.mark.slow
def test_a_corrupt_newest_checkpoint_is_skipped(tmp_path, digits_data):
    hps = {**DIGITS_HPS, "epochs": "1"}
    first = run_train(tmp_path, digits_data, hps, timeout=600)
    assert first.returncode == 0, first.stdout[-2000:]
    (tmp_path / "checkpoints" / "checkpoint-0001-000005.pt").write_bytes(b"torn write")
    second = run_train(tmp_path, digits_data, {**hps, "epochs": "2"}, timeout=600)
    assert second.returncode == 0, second.stdout[-2000:]
    assert "event=checkpoint_skipped path=checkpoint-0001-000005.pt" in second.stdout
    assert "event=resumed checkpoint=checkpoint-0001-000000.pt epoch=1 step=0" in second.stdout


@pytest.mark.slow
def test_another_runs_checkpoint_is_set_aside_not_resumed(tmp_path, digits_data):
    """Tuning trials can share a checkpoint URI: a trial must not continue another's training."""
    hps = {**DIGITS_HPS, "epochs": "1"}
    first = run_train(tmp_path, digits_data, hps, timeout=600)
    assert first.returncode == 0, first.stdout[-2000:]
    other_lr = str(float(hps["lr"]) * 3)
    second = run_train(tmp_path, digits_data, {**hps, "lr": other_lr, "epochs": "2"}, timeout=600)
    assert second.returncode == 0, second.stdout[-2000:]
    assert "event=checkpoint_ignored path=checkpoint-0001-000000.pt reason=different_hyperparameters:lr" in second.stdout
    assert "event=resumed" not in second.stdout
    checkpoints = tmp_path / "checkpoints"
    assert (checkpoints / "foreign" / "checkpoint-0001-000000.pt").exists()
    assert sorted(p.name for p in checkpoints.glob("checkpoint-*.pt")) == ["checkpoint-0001-000000.pt", "checkpoint-0002-000000.pt"]
    assert len(read_json(tmp_path / "output" / "data" / "metrics.json")["history"]) == 2


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_to_the_whole_process_group_stops_cleanly_with_a_checkpoint(tmp_path, digits_data, sig):
    """Ctrl-C in a terminal (or ``timeout``, some ``docker stop``s) signals every process of the group: the loader
    workers leave it to the trainer, which saves its position and stops, as for SageMaker's SIGTERM to it alone."""
    write_job(tmp_path, digits_data, {**DIGITS_HPS, "epochs": "2", "log_interval": "1", "num_workers": "2"})
    job = subprocess.Popen(
        ["train"], env=train_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    try:
        seen = _wait_for(job, r"event=step epoch=1 step=3\b")
        os.killpg(job.pid, sig)
        out = "".join(seen) + job.communicate(timeout=60)[0]
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
    assert job.returncode == 143, out[-3000:]
    assert re.search(r"event=checkpoint path=checkpoint-0000-\d+\.pt reason=signal", out), out[-3000:]
    assert f"event=interrupted signal={signal.Signals(sig).name}" in out
    assert "internal error" not in out and "killed by signal" not in out and "Traceback" not in out, out[-3000:]
    assert not (tmp_path / "output" / "failure").exists()
