"""Every bad input leaves a one-line reason in /opt/ml/output/failure and a non-zero exit."""

from __future__ import annotations

import shutil

import pytest

from tests.helpers import DIGITS_HPS, failure_reason, run_train


def _copy(src, dst):
    shutil.copytree(src, dst, symlinks=False)
    return dst


def _expect_failure(base, data, hps, match, **kw):
    result = run_train(base, data, hps, **kw)
    assert result.returncode != 0, result.stdout[-2000:]
    reason = failure_reason(base)
    assert "\n" not in reason
    for fragment in match:
        assert fragment in reason, reason
    return result


def test_unknown_and_malformed_hyperparameters(tmp_path, digits_data):
    _expect_failure(
        tmp_path,
        digits_data,
        {**DIGITS_HPS, "epochs": "many", "learning_rate": "1"},
        ["epochs='many'", "unknown hyperparameter 'learning_rate'"],
    )


def test_missing_validation_channel(tmp_path, digits_data):
    data = _copy(digits_data, tmp_path / "d")
    shutil.rmtree(data / "validation")
    _expect_failure(tmp_path / "job", data, DIGITS_HPS, ["no 'validation' channel"])


def test_empty_channel(tmp_path, digits_data):
    data = _copy(digits_data, tmp_path / "d")
    shutil.rmtree(data / "test")
    (data / "test").mkdir()
    _expect_failure(tmp_path / "job", data, DIGITS_HPS, ["channel 'test' is empty"])


def test_empty_class(tmp_path, digits_data):
    data = _copy(digits_data, tmp_path / "d")
    for f in (data / "validation" / "digit_3").iterdir():
        f.unlink()
    _expect_failure(tmp_path / "job", data, DIGITS_HPS, ["channel 'validation' has empty classes", "digit_3"])


def test_class_sets_differ(tmp_path, digits_data):
    data = _copy(digits_data, tmp_path / "d")
    (data / "validation" / "digit_9").rename(data / "validation" / "digit_nine")
    _expect_failure(tmp_path / "job", data, DIGITS_HPS, ["class sets differ", "'digit_9'", "'digit_nine'"])


def test_too_many_unreadable_images(tmp_path, digits_data):
    data = _copy(digits_data, tmp_path / "d")
    for i, f in enumerate(sorted((data / "train" / "digit_5").iterdir())):
        if i % 2 == 0:
            f.write_bytes(b"corrupt")
    _expect_failure(tmp_path / "job", data, {**DIGITS_HPS, "max_bad_fraction": "0.01"}, ["unreadable", "max_bad_fraction=0.01"])


def test_pretrained_requested_but_not_found(tmp_path, digits_data):
    _expect_failure(
        tmp_path, digits_data, {**DIGITS_HPS, "pretrained": "true"}, ["pretrained weights for 'resnet18' requested but none found"]
    )


def test_pretrained_file_that_does_not_fit(tmp_path, digits_data, lite0_weights):
    channel = tmp_path / "pre"
    channel.mkdir()
    shutil.copy(lite0_weights, channel / "resnet18.safetensors")
    _expect_failure(tmp_path / "job", digits_data, {**DIGITS_HPS, "pretrained": "true"}, ["do not fit"], channels={"pretrained": channel})


def test_unknown_model(tmp_path, digits_data):
    _expect_failure(tmp_path, digits_data, {**DIGITS_HPS, "model": "resnet_9000"}, ["unknown model 'resnet_9000'"])


@pytest.mark.timeout(120)
def test_unresolvable_peer_hosts_fail_after_the_timeout(tmp_path, digits_data):
    result = _expect_failure(
        tmp_path,
        digits_data,
        DIGITS_HPS,
        ["['algo-2']", "did not resolve within 3s"],
        hosts=("algo-1", "algo-2"),
        env={"IMAGE_CLASSIFIER_HOST_WAIT_SECONDS": "3", "SM_CURRENT_HOST": "algo-1"},
    )
    assert "event=launch" not in result.stdout


def test_a_gpu_job_without_usable_cuda_stops_at_once_instead_of_training_on_the_cpu(tmp_path, digits_data):
    """This machine has no GPU: a job told it has one (SM_NUM_GPUS) must refuse, not fall back."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("a usable GPU is present: the refusal cannot be provoked here")
    gpu = {"SM_NUM_GPUS": "1"}
    result = _expect_failure(
        tmp_path / "job", digits_data, DIGITS_HPS, ["a GPU is expected (SM_NUM_GPUS=1) but CUDA cannot be used"], env=gpu
    )
    assert "event=start" not in result.stdout  # stopped before any data was read or model built
    # allowed: it passes the gate and starts on the CPU (then stops at the empty data channel, quickly)
    allowed = run_train(tmp_path / "allowed", None, DIGITS_HPS, env={**gpu, "IMAGE_CLASSIFIER_ALLOW_CPU": "true"})
    assert "event=cpu_fallback reason=allowed expected=SM_NUM_GPUS=1" in allowed.stdout
    assert "device=cpu" in allowed.stdout and "no 'train' channel" in failure_reason(tmp_path / "allowed")
