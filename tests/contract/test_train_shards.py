"""``train`` on sharded channels (data/shards.py), as a real process: the path for a million photos, on digits.

Asserted: a job interrupted mid-epoch by SIGTERM resumes exactly (its weights equal an uninterrupted
job's, bit for bit); four processes as two hosts take equal steps and see every validation image
once; an image that no longer decodes inside a shard is counted, and a job that loses more than
``max_bad_fraction`` stops during the epoch, not after it.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from image_classifier.data import shards
from tests.helpers import DIGITS_HPS, failure_reason, read_json, run_train, train_env, write_job

EXACT = {**DIGITS_HPS, "deterministic": "true", "amp": "off", "num_workers": "0", "epochs": "2", "log_interval": "1"}


def write_sharded(source: Path, dest: Path, *, splits=("train", "validation"), corrupt: int = 0) -> Path:
    """``source``'s splits as shards (``splits``) or links to the folders (the others), as a data step leaves them."""
    for split in ("train", "validation", "test"):
        folder = source / split
        classes = sorted(p.name for p in folder.iterdir() if p.is_dir())
        samples = [(p, i) for i, c in enumerate(classes) for p in sorted((folder / c).iterdir()) if p.suffix == ".png"]
        if split not in splits:
            (dest / split).parent.mkdir(parents=True, exist_ok=True)
            (dest / split).symlink_to(folder, target_is_directory=True)
            continue
        if corrupt and split == "train":
            for path, _ in samples[:corrupt]:
                broken = dest / "broken" / path.name
                broken.parent.mkdir(parents=True, exist_ok=True)
                broken.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 64)
            samples = [(dest / "broken" / p.name, label) if i < corrupt else (p, label) for i, (p, label) in enumerate(samples)]
        shards.write_shards(samples, classes, dest / split, split=split, seed=1, shard_bytes=40_000, chunk_samples=64)
    return dest


@pytest.fixture(scope="module")
def sharded(tmp_path_factory):
    from local.sample_data import write_digits

    return write_sharded(write_digits(tmp_path_factory.mktemp("digits")), tmp_path_factory.mktemp("sharded"))


def _start(base: Path, data: Path, hps: dict[str, str]) -> subprocess.Popen:
    write_job(base, data, hps)
    log = (base / "train.log").open("w")
    return subprocess.Popen(["train"], env=train_env(base, {"SM_NUM_CPUS": "1"}), stdout=log, stderr=subprocess.STDOUT, cwd=base)


@pytest.mark.slow
def test_a_sharded_job_interrupted_mid_epoch_resumes_exactly(tmp_path, sharded):
    whole = _start(tmp_path / "whole", sharded, EXACT)
    cut = _start(tmp_path / "cut", sharded, EXACT)
    log = tmp_path / "cut" / "train.log"
    deadline = time.monotonic() + 300
    while not re.search(r"event=step epoch=1 step=7\b", log.read_text()):
        assert cut.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.05)
    cut.send_signal(signal.SIGTERM)
    assert cut.wait(timeout=30) != 0  # stopped, with a checkpoint of the step it reached
    stopped_at = int(re.findall(r"event=checkpoint .*?reason=signal epoch=0 step=(\d+)", log.read_text())[-1])
    assert 7 <= stopped_at < 20
    again = _start(tmp_path / "cut", sharded, EXACT)
    assert again.wait(timeout=600) == 0 and whole.wait(timeout=600) == 0, (tmp_path / "cut" / "train.log").read_text()[-3000:]
    resumed = (tmp_path / "cut" / "train.log").read_text()
    assert f"event=resumed checkpoint=checkpoint-0000-{stopped_at:06d}.pt epoch=0 step={stopped_at}" in resumed
    assert "sharded=train,validation" in resumed
    assert "event=image_cache mode=none reason=sharded_input" in resumed
    ours, theirs = (load_file(tmp_path / run / "model" / "model.safetensors") for run in ("cut", "whole"))
    assert ours.keys() == theirs.keys() and all(ours[k].equal(theirs[k]) for k in ours)  # the same samples, augmentations, steps
    history = read_json(tmp_path / "whole" / "output" / "data" / "metrics.json")["history"]
    valid_images = shards.read_manifest(sharded / "validation").samples
    assert [h["valid_images"] for h in history] == [valid_images] * 2  # every validation image once per epoch


@pytest.mark.slow
def test_four_processes_on_two_hosts_take_equal_steps_and_see_every_validation_image_once(tmp_path, sharded):
    """Two torchrun nodes of two gloo processes each on this machine, as two SageMaker hosts would run them."""
    port = _free_port()
    nodes = []
    for node in range(2):
        base = tmp_path / f"host{node}"
        write_job(base, sharded, {**DIGITS_HPS, "epochs": "1"})
        command = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nnodes=2",
            f"--node_rank={node}",
            "--nproc_per_node=2",
            "--master_addr=127.0.0.1",
            f"--master_port={port}",
            "-m",
            "image_classifier.training.launcher",
        ]
        env = train_env(base, {"SM_NUM_CPUS": "1", "SM_NUM_GPUS": "0"})
        nodes.append(subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=base))
    outputs = [node.communicate(timeout=600)[0] for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]
    ranks = [
        dict(re.findall(r"(rank|steps|images)=(\d+)", line)) for out in outputs for line in out.splitlines() if "event=rank_epoch" in line
    ]
    assert sorted(int(r["rank"]) for r in ranks) == [0, 1, 2, 3]
    assert len({r["steps"] for r in ranks}) == 1 and len({r["images"] for r in ranks}) == 1, ranks
    train = shards.read_manifest(sharded / "train").samples
    assert sum(int(r["images"]) for r in ranks) >= train - 4 * 32  # all but a last partial batch per rank (drop_last)
    history = read_json(tmp_path / "host0" / "output" / "data" / "metrics.json")["history"]
    assert history[0]["valid_images"] == shards.read_manifest(sharded / "validation").samples


@pytest.mark.slow
def test_images_that_no_longer_decode_are_counted_and_a_job_that_loses_too_many_stops_mid_epoch(tmp_path, digits_data):
    from local.sample_data import write_digits

    data = write_sharded(write_digits(tmp_path / "digits"), tmp_path / "sharded", corrupt=12)
    ok = run_train(tmp_path / "tolerated", data, {**DIGITS_HPS, "epochs": "1", "max_bad_fraction": "0.05"})
    assert ok.returncode == 0, ok.stdout[-3000:]
    assert read_json(tmp_path / "tolerated" / "output" / "data" / "metrics.json")["final"]["bad_images"] == 12
    hps = {**DIGITS_HPS, "epochs": "1", "max_bad_fraction": "0.002", "log_interval": "1"}
    stopped = run_train(tmp_path / "refused", data, hps)
    assert stopped.returncode == 1 and "images became unreadable during training" in failure_reason(tmp_path / "refused")
    steps = [int(s) for s in re.findall(r"event=step epoch=1 step=(\d+)", stopped.stdout)]
    epoch_steps = shards.read_manifest(data / "train").samples // 64
    assert steps and max(steps) < epoch_steps, (max(steps), epoch_steps)  # stopped during the epoch, not at its end
    assert "event=epoch " not in stopped.stdout


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
