"""SageMaker local mode (SDK v2 LocalSession): fit on file:// data, deploy locally, predict;
a two-instance training that runs torchrun/DDP across two containers; and script mode, the
SDK's PyTorch estimator and PyTorchModel running a user's own scripts in the image."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from local.sample_data import FASHION_CLASSES
from tests.helpers import DIGITS_HPS, REPO_ROOT, fresh_copy
from tests.readme import script

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


def test_the_readme_local_mode_block_fits_deploys_and_predicts(engine, image, tmp_path):
    """The README's "local-mode" block, as written, in a fresh copy: the defaults train on what make local-data wrote."""
    repo = fresh_copy(tmp_path / "repo", with_venv=True)
    ran = subprocess.run(["bash", "-c", script("local-mode")], cwd=repo, env=engine.env, capture_output=True, text=True, timeout=1500)
    out = ran.stdout + ran.stderr
    assert ran.returncode == 0, out[-4000:]
    assert "event=final" in out and "event=pretrained_loaded source=channel" in out and "model=tf_efficientnet_lite0" in out
    assert "[\n" in ran.stdout, out[-2000:]
    top, _ = json.JSONDecoder().raw_decode(ran.stdout[ran.stdout.rindex("[\n") :])  # the top-5 local_mode prints
    assert len(top) == 5 and top[0]["label"] in FASHION_CLASSES, out[-2000:]
    for noise in ("will collect telemetry", "on path of deprecation", "sagemaker.config INFO", "Ignoring unnecessary instance type"):
        assert noise not in out, noise  # the SDK's chatter is folded away (deploy/quiet.py)


def test_two_instances_train_with_ddp_across_containers(engine, image, digits_data, tmp_path):
    out = _local_mode(engine, digits_data, tmp_path / "out", 2, False, {**DIGITS_HPS, "epochs": "1", "batch_size": "32"})
    starts = [line for line in out.splitlines() if "event=start " in line]
    assert len(starts) == 2 and all("world_size=2" in line for line in starts), starts
    assert {"rank=0", "rank=1"} <= {word for line in starts for word in line.split()}
    assert "event=launch nodes=2" in out


SCRIPT_DRIVER = """
import json, sys
from pathlib import Path
from sagemaker.deserializers import JSONDeserializer
from sagemaker.serializers import IdentitySerializer
from local.local_mode import pytorch_estimator, pytorch_model
data, output, source, rows = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4])
estimator = pytorch_estimator("image-classifier:local", source, "train.py", {"greeting": "local-mode"}, output=output)
estimator.fit({"train": f"file://{data / 'train'}"}, wait=True, logs=True)
print("MODEL_DATA", estimator.model_data, flush=True)
model = pytorch_model("image-classifier:local", estimator.model_data, source, "inference.py", output)
predictor = model.deploy(1, "local", serializer=IdentitySerializer("text/csv"), deserializer=JSONDeserializer())
try:
    answer = predictor.predict(rows.read_bytes())
finally:
    predictor.delete_endpoint()
Path(sys.argv[5]).write_text(json.dumps(answer))  # a file: the endpoint's log lines interleave with stdout
"""


def test_script_mode_trains_and_serves_a_users_own_scripts(engine, image, digits_data, tmp_path):
    """PyTorch(entry_point="train.py", source_dir=...) fits; PyTorchModel(entry_point="inference.py") serves it."""
    from tests.contract.test_serve_user_code import csv_row
    from tests.helpers import USER_SCRIPT_DIR

    found = engine.docker(
        "run", "--rm", "--entrypoint", "sh", image, "-c",
        'type -a train; cat "$(command -v train)"; python -c "import importlib.metadata as m; print(m.version(\'sagemaker-training\'))"',
    ).stdout  # fmt: skip
    assert found.count("train is ") == 1 and "from image_classifier.training.launcher import cli" in found and "4.9.0" in found, found
    source = shutil.copytree(USER_SCRIPT_DIR, tmp_path / "source")  # the containers write as root; keep the repository clean
    pictures = [p for d in sorted((digits_data / "test").iterdir()) for p in sorted(d.glob("*.png"))[:3]]
    (tmp_path / "rows.csv").write_text("\n".join(csv_row(p) for p in pictures))
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT_DRIVER, str(digits_data), str(tmp_path / "out"), str(source), str(tmp_path / "rows.csv"), str(tmp_path / "answer.json")],
        env=engine.env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=1500,
    )  # fmt: skip
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-6000:]
    assert "event=script_mode program=train.py" in out and "user_script rank=0 world_size=1" in out and "greeting=local-mode" in out
    assert "event=epoch" not in out  # our trainer did not run
    answer = json.loads((tmp_path / "answer.json").read_text())
    assert answer["model"] == "nearest-centroid" and len(answer["labels"]) == len(pictures) == 30
    assert sum(label == p.parent.name for label, p in zip(answer["labels"], pictures, strict=True)) >= 21, answer
