"""Script mode's decisions, on the hyperparameters the SDK itself writes."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

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


def _python(tmp_path, code: str, error_file, *extra_path) -> subprocess.CompletedProcess:
    from image_classifier.training.script_runner import HOOK_DIR

    env = {
        **os.environ,
        params.SCRIPT_ERROR_FILE_ENV: str(error_file),
        "PYTHONPATH": os.pathsep.join([str(HOOK_DIR), *map(str, extra_path)]),
    }
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=tmp_path)


def test_the_scripts_exception_is_recorded_on_one_line_and_its_traceback_still_printed(tmp_path):
    error_file = tmp_path / "exception"
    result = _python(tmp_path, "import json\nraise json.JSONDecodeError('bad\\n  input', 'xy', 1)", error_file)
    assert result.returncode == 1 and "Traceback (most recent call last)" in result.stderr
    assert error_file.read_text() == "json.decoder.JSONDecodeError: bad input: line 1 column 2 (char 1)"
    again = _python(tmp_path, "raise ValueError('a second failing rank')", error_file)
    assert again.returncode == 1 and "a second failing rank" in again.stderr
    assert error_file.read_text().startswith("json.decoder.JSONDecodeError")  # the first failure is the one kept


def test_a_users_own_sitecustomize_still_runs(tmp_path):
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "sitecustomize.py").write_text("import builtins\nbuiltins.USERS_SITECUSTOMIZE = True\n")
    result = _python(tmp_path, "import builtins\nprint(builtins.USERS_SITECUSTOMIZE)\nraise KeyError('x')", tmp_path / "e", theirs)
    assert result.stdout.strip() == "True" and (tmp_path / "e").read_text() == "KeyError: 'x'"


def test_the_failure_message_leads_with_the_recorded_exception(tmp_path):
    from sagemaker_training import errors

    from image_classifier.training.script_runner import with_recorded_exception

    cut = errors.ExecuteUserScriptError(cmd="python train.py", return_code=1, output="raise ValueError(x)\n ValueError\n asked to fail")
    (tmp_path / "exception").write_text("ValueError: asked to fail")
    message = str(with_recorded_exception(cut, tmp_path / "exception"))
    assert message.startswith('ExecuteUserScriptError:\nExitCode 1\nErrorMessage "ValueError: asked to fail\nraise ValueError(x)')
    assert with_recorded_exception(cut, tmp_path / "absent") is cut  # a shell script, or an exit without an exception
