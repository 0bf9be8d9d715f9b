"""Two-process DDP on CPU (gloo) through torchrun, as SM_NUM_GPUS / several hosts would start it."""

from __future__ import annotations

import csv

import pytest

from tests.helpers import DIGITS_HPS, read_json, run_train


@pytest.mark.slow
def test_two_process_ddp_writes_one_artifact(tmp_path, digits_data, digits_job):
    """batch_size is per process: 2 x 32 is the single-process job's global batch of 64."""
    result = run_train(tmp_path, digits_data, {**DIGITS_HPS, "batch_size": "32", "processes_per_host": "2"})
    assert result.returncode == 0, result.stdout[-4000:]
    assert "event=launch nodes=1 node_rank=0 procs_per_node=2" in result.stdout
    starts = [line for line in result.stdout.splitlines() if "event=start " in line]
    assert len(starts) == 2 and all("world_size=2" in line for line in starts)
    assert {"rank=0", "rank=1"} <= {part for line in starts for part in line.split()}
    assert len([line for line in result.stdout.splitlines() if "event=artifact " in line]) == 1
    metrics = read_json(tmp_path / "output" / "data" / "metrics.json")
    single = read_json(digits_job[0] / "output" / "data" / "metrics.json")["final"]["test_acc"]
    assert abs(metrics["final"]["test_acc"] - single) <= 0.1, (metrics["final"]["test_acc"], single)
    rows = list(csv.DictReader((tmp_path / "output" / "data" / "per_class_metrics.csv").open()))
    assert sum(int(r["support"]) for r in rows) == 200  # every test image evaluated once across ranks
