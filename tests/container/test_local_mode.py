"""SageMaker local mode (SDK v2 LocalSession): fit on file:// data, deploy locally, predict;
and a two-instance training that runs torchrun/DDP across two containers."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.helpers import DIGITS_HPS, REPO_ROOT

pytestmark = [pytest.mark.container, pytest.mark.slow]

DRIVER = """
import json, sys
from pathlib import Path
from local.local_mode import train, deploy_and_predict
data, output, count, predict = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "predict"
hps, instance_type = json.loads(sys.argv[5]), sys.argv[6]
estimator = train("image-classifier:local", data, output, hps, instance_type, count)
print("MODEL_DATA", estimator.model_data, flush=True)
if predict:
    sample = sorted((data / "test" / "digit_7").glob("*.png"))[0]
    print("ANSWER", json.dumps(deploy_and_predict(estimator, instance_type, sample.read_bytes())), flush=True)
"""


def _local_mode(engine, digits_data, output, count: int, predict: bool, hps: dict, instance_type: str = "local") -> str:
    result = subprocess.run(
        [sys.executable, "-c", DRIVER, str(digits_data), str(output), str(count), "predict" if predict else "fit", json.dumps(hps), instance_type],
        env=engine.env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=1500,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return result.stdout + result.stderr


def test_fit_deploy_predict(engine, image, digits_data, tmp_path):
    out = _local_mode(engine, digits_data, tmp_path / "out", 1, True, {**DIGITS_HPS, "epochs": "1"})
    assert "event=final" in out
    model_data = next(line.split()[1] for line in out.splitlines() if line.startswith("MODEL_DATA"))
    assert model_data.startswith("file://") and model_data.endswith("model.tar.gz")
    answer = json.loads(next(line.split(" ", 1)[1] for line in out.splitlines() if line.startswith("ANSWER")))
    assert answer["predictions"][0]["label"].startswith("digit_") and len(answer["predictions"][0]["top_k"]) == 5


def test_two_instances_train_with_ddp_across_containers(engine, image, digits_data, tmp_path):
    out = _local_mode(engine, digits_data, tmp_path / "out", 2, False, {**DIGITS_HPS, "epochs": "1", "batch_size": "32"})
    starts = [line for line in out.splitlines() if "event=start " in line]
    assert len(starts) == 2 and all("world_size=2" in line for line in starts), starts
    assert {"rank=0", "rank=1"} <= {word for line in starts for word in line.split()}
    assert "event=launch nodes=2" in out
