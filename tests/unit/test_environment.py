import json

import pytest

from image_classifier.environment import TrainingEnvironment
from image_classifier.errors import UserError


def _layout(base, hps=None, resource=None, channels=("train", "validation")):
    config = base / "input" / "config"
    config.mkdir(parents=True)
    (config / "hyperparameters.json").write_text(json.dumps(hps or {"epochs": "3"}))
    (config / "resourceconfig.json").write_text(json.dumps(resource or {"current_host": "algo-1", "hosts": ["algo-1"]}))
    (config / "inputdataconfig.json").write_text(json.dumps({c: {} for c in channels}))
    for c in channels:
        (base / "input" / "data" / c).mkdir(parents=True)


def test_reads_files_under_the_base_dir(tmp_path):
    _layout(tmp_path, resource={"current_host": "algo-2", "hosts": ["algo-1", "algo-2"]})
    env = TrainingEnvironment.from_env({"SAGEMAKER_BASE_DIR": str(tmp_path)})
    assert env.hyperparameters == {"epochs": "3"}
    assert set(env.channels) == {"train", "validation"}
    assert env.channels["train"] == tmp_path / "input" / "data" / "train"
    assert env.hosts == ("algo-1", "algo-2") and env.current_host == "algo-2" and env.host_rank == 1
    assert env.model_dir == tmp_path / "model"
    assert env.failure_file == tmp_path / "output" / "failure"
    assert env.checkpoint_dir == tmp_path / "checkpoints"
    assert env.tensorboard_dir == tmp_path / "output" / "tensorboard"
    assert env.debug_hook_config is None


def test_sm_variables_take_precedence(tmp_path):
    _layout(tmp_path)
    other = tmp_path / "elsewhere"
    other.mkdir()
    env = TrainingEnvironment.from_env(
        {
            "SAGEMAKER_BASE_DIR": str(tmp_path),
            "SM_HOSTS": '["h1", "h2"]',
            "SM_CURRENT_HOST": "h2",
            "SM_NUM_GPUS": "4",
            "SM_NUM_CPUS": "3",
            "SM_CHANNEL_TEST": str(other),
        }
    )
    assert env.hosts == ("h1", "h2") and env.current_host == "h2"
    assert env.num_gpus == 4 and env.num_cpus == 3
    assert env.channels["test"] == other


def test_is_read_only(tmp_path):
    _layout(tmp_path)
    env = TrainingEnvironment.from_env({"SAGEMAKER_BASE_DIR": str(tmp_path)})
    with pytest.raises(AttributeError):
        env.current_host = "x"
    with pytest.raises(TypeError):
        env.hyperparameters["epochs"] = "9"


def test_malformed_config_names_the_file(tmp_path):
    _layout(tmp_path)
    (tmp_path / "input" / "config" / "hyperparameters.json").write_text("{not json")
    with pytest.raises(UserError, match=r"hyperparameters\.json"):
        TrainingEnvironment.from_env({"SAGEMAKER_BASE_DIR": str(tmp_path)})


def test_current_host_must_be_listed(tmp_path):
    _layout(tmp_path, resource={"current_host": "algo-9", "hosts": ["algo-1"]})
    with pytest.raises(UserError, match="algo-9"):
        TrainingEnvironment.from_env({"SAGEMAKER_BASE_DIR": str(tmp_path)})


def test_no_config_defaults_to_one_host(tmp_path):
    env = TrainingEnvironment.from_env({"SAGEMAKER_BASE_DIR": str(tmp_path)})
    assert env.hosts == ("algo-1",) and env.hyperparameters == {} and dict(env.channels) == {}


def test_model_and_output_dirs_come_from_the_environment_given_not_the_process(tmp_path, monkeypatch):
    _layout(tmp_path)
    monkeypatch.setenv("SM_MODEL_DIR", str(tmp_path / "from-the-process"))
    given = {"SAGEMAKER_BASE_DIR": str(tmp_path), "SM_MODEL_DIR": str(tmp_path / "m"), "SM_OUTPUT_DATA_DIR": str(tmp_path / "o")}
    env = TrainingEnvironment.from_env(given)
    assert env.model_dir == tmp_path / "m" and env.output_data_dir == tmp_path / "o"
    plain = TrainingEnvironment.from_env({"SAGEMAKER_BASE_DIR": str(tmp_path)})
    assert plain.model_dir == tmp_path / "model" and plain.output_data_dir == tmp_path / "output" / "data"


def test_nccl_and_gloo_use_the_interface_sagemaker_names_between_hosts(tmp_path):
    from image_classifier.training.launcher import socket_interface_variables

    _layout(tmp_path, resource={"current_host": "algo-1", "hosts": ["algo-1", "algo-2"], "network_interface_name": "ethwe"})
    env = TrainingEnvironment.from_env({"SAGEMAKER_BASE_DIR": str(tmp_path)})
    assert env.network_interface_name == "ethwe"
    assert socket_interface_variables(env, {}) == {"NCCL_SOCKET_IFNAME": "ethwe", "GLOO_SOCKET_IFNAME": "ethwe"}
    assert socket_interface_variables(env, {"NCCL_SOCKET_IFNAME": "eth1"}) == {"GLOO_SOCKET_IFNAME": "ethwe"}  # the user's choice stays
    single = tmp_path / "single"
    single.mkdir()
    _layout(single, resource={"current_host": "algo-1", "hosts": ["algo-1"], "network_interface_name": "ethwe"})
    assert socket_interface_variables(TrainingEnvironment.from_env({"SAGEMAKER_BASE_DIR": str(single)}), {}) == {}


def test_a_named_job_checkpoints_in_a_folder_of_its_own(tmp_path):
    """Tuning trials share one checkpoint S3 prefix: each keeps to the folder named after its job."""
    _layout(tmp_path)
    env = TrainingEnvironment.from_env({"SAGEMAKER_BASE_DIR": str(tmp_path), "TRAINING_JOB_NAME": "ic-tune-20261201-1-003-0a1b2c3d"})
    assert env.job_named and env.job_name == "ic-tune-20261201-1-003-0a1b2c3d"
    assert env.checkpoint_dir == tmp_path / "checkpoints" / "ic-tune-20261201-1-003-0a1b2c3d"
    odd = TrainingEnvironment.from_env({"SAGEMAKER_BASE_DIR": str(tmp_path), "TRAINING_JOB_NAME": "../x y"})
    assert odd.checkpoint_dir == tmp_path / "checkpoints" / "x-y"
    unnamed = TrainingEnvironment.from_env({"SAGEMAKER_BASE_DIR": str(tmp_path)})
    assert not unnamed.job_named and unnamed.job_name == "local" and unnamed.checkpoint_dir == tmp_path / "checkpoints"
