"""Script mode's decisions, on the hyperparameters the SDK itself writes."""

from __future__ import annotations

import dataclasses
import json

import pytest

from image_classifier import params
from image_classifier.environment import TrainingEnvironment
from image_classifier.errors import UserError
from image_classifier.training.launcher import script_mode_requested
from image_classifier.training.script_mode import Plan, plan
from tests.helpers import USER_SCRIPT_DIR


def _env(hyperparameters: dict[str, str]) -> TrainingEnvironment:
    env = TrainingEnvironment.from_env({params.BASE_DIR_ENV: "/nonexistent"})
    return dataclasses.replace(env, hyperparameters={k: str(v) for k, v in hyperparameters.items()})


@pytest.mark.parametrize(("torchrun", "expected"), [(True, Plan(4, True)), (False, Plan(1, False))])
def test_the_pytorch_estimators_hyperparameters(torchrun, expected, tmp_path):
    """PyTorch(entry_point=..., source_dir=..., distribution=...) as fit() prepares it, read by our launcher."""
    from local.local_mode import pytorch_estimator

    estimator = pytorch_estimator(
        "image-classifier:local", USER_SCRIPT_DIR, "train.py", {"greeting": "hi"}, torchrun=torchrun, output=tmp_path
    )
    estimator._prepare_for_training(job_name="script-mode-1")  # what fit() does before the job starts
    hps = estimator.hyperparameters()
    assert json.loads(hps[params.PROGRAM_PARAM]) == "train.py"
    env = _env(hps)
    assert script_mode_requested(env)
    assert plan(env, gpus=4) == expected


def test_our_own_jobs_are_not_script_mode():
    assert not script_mode_requested(_env({"model": "resnet18", "sagemaker_job_name": '"x"'}))


def test_processes_per_host_as_the_toolkits_runners_read_it():
    hps = {params.TORCH_DISTRIBUTED_PARAM: "true", params.PROCESSES_PER_HOST_PARAM: "3"}
    assert plan(_env(hps), gpus=0) == Plan(3, True)
    assert plan(_env({params.TORCH_DISTRIBUTED_PARAM: "true"}), gpus=0) == Plan(1, True)  # CPU: one process
    with pytest.raises(UserError, match="is not an integer"):
        plan(_env({**hps, params.PROCESSES_PER_HOST_PARAM: "two"}), gpus=0)


def test_a_distribution_without_its_launcher_names_the_alternative():
    with pytest.raises(UserError, match=r"distribution 'pytorchddp' is not supported by this image.*torch_distributed"):
        plan(_env({"sagemaker_pytorch_ddp_enabled": "true"}), gpus=8)


def test_pytorch_model_packs_the_code_where_serve_looks_for_it(tmp_path):
    """PyTorchModel(entry_point="inference.py") repacks model.tar.gz with code/ and names it in SAGEMAKER_PROGRAM."""
    import tarfile

    from image_classifier.serving import user_code
    from local.local_mode import pytorch_model

    tar = tmp_path / "model.tar.gz"
    (tmp_path / "classes.json").write_text("[]")
    with tarfile.open(tar, "w:gz") as archive:
        archive.add(tmp_path / "classes.json", "classes.json")
    model = pytorch_model("image-classifier:local", f"file://{tar}", USER_SCRIPT_DIR, "inference.py", tmp_path / "out")
    environment = model.prepare_container_def(instance_type="local")["Environment"]
    with tarfile.open(tar) as archive:
        archive.extractall(tmp_path / "extracted", filter="data")
    found = user_code.find(tmp_path / "extracted", environment)
    assert environment[params.USER_PROGRAM_ENV] == "inference.py" and found is not None and found.has_model_fn
