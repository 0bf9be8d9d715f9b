"""Start-up failures and clean shutdown of `serve`."""

from __future__ import annotations

import shutil
import time

import psutil

from tests.helpers import ServeProcess


def _artifact_copy(digits_job, tmp_path):
    base = tmp_path / "ml"
    shutil.copytree(digits_job[0] / "model", base / "model")
    return base


def test_sigterm_leaves_no_process_and_no_pid_file(digits_job, tmp_path):
    server = ServeProcess(digits_job[0], tmp_path / "tmp")
    server.wait_ready()
    family = psutil.Process(server.process.pid).children(recursive=True)
    commands = " ".join(" ".join(p.cmdline()) for p in family)
    assert "java" in commands and "model_service_worker" in commands, commands[:500]
    started = time.monotonic()
    assert server.stop() == 0
    assert time.monotonic() - started < 25  # inside SageMaker's 30 s grace period
    time.sleep(0.5)
    survivors = [p for p in family if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert survivors == [], [p.cmdline() for p in survivors]
    assert list((tmp_path / "tmp").glob("serve-*")) == []  # config, model store, MMS pid file: all gone
    assert "event=shutdown reason=signal" in server.log() and "event=mms_stopped" in server.log()
    assert not list((tmp_path / "tmp").rglob(".model_server.pid"))


def test_missing_artifact_fails_start_up_with_a_reason(tmp_path):
    (tmp_path / "ml" / "model").mkdir(parents=True)
    server = ServeProcess(tmp_path / "ml", tmp_path / "tmp")
    assert server.process.wait(timeout=60) == 1
    assert "event=serve_failed reason=no_model_artifact" in server.log()


def test_corrupt_weights_fail_start_up(digits_job, tmp_path):
    base = _artifact_copy(digits_job, tmp_path)
    weights = base / "model" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-100] ^= 0xFF
    weights.write_bytes(bytes(data))
    server = ServeProcess(base, tmp_path / "tmp")
    assert server.process.wait(timeout=60) == 1
    assert "does_not_match_the_sha256" in server.log()


def test_invalid_model_card_fails_start_up(digits_job, tmp_path):
    base = _artifact_copy(digits_job, tmp_path)
    (base / "model" / "model_card.json").write_text('{"architecture": "resnet18"}')
    server = ServeProcess(base, tmp_path / "tmp")
    assert server.process.wait(timeout=60) == 1
    assert "not_a_valid_model_card" in server.log()


def test_bad_server_settings_fail_start_up(digits_job, tmp_path):
    server = ServeProcess(digits_job[0], tmp_path / "tmp", SAGEMAKER_MODEL_SERVER_WORKERS="zero")
    assert server.process.wait(timeout=60) == 1
    assert "SAGEMAKER_MODEL_SERVER_WORKERS" in server.log()
