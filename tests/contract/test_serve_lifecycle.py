"""Start-up failures and clean shutdown of `serve`."""

from __future__ import annotations

import os
import shutil
import signal
import threading
import time

import psutil
import pytest
import requests

from tests.contract.test_serve_load import payloads
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


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_to_the_whole_group_during_traffic_answers_or_refuses_cleanly(digits_job, digits_data, tmp_path, sig):
    """Ctrl-C in a terminal or `docker compose down` signal every process of serve at once, workers included."""
    server = ServeProcess(digits_job[0], tmp_path / "tmp", own_group=True)
    server.wait_ready()
    body = payloads(digits_data)[1][1]
    outcomes: list[str] = []
    stop = threading.Event()

    def traffic() -> None:
        while not stop.is_set():
            try:
                answer = requests.post(f"{server.url}/invocations", data=body, headers={"Content-Type": "image/jpeg"}, timeout=30)
                outcomes.append(str(answer.status_code) if answer.status_code == 200 else f"{answer.status_code} {answer.text[:200]}")
            except requests.ConnectionError as exc:
                # refused once the front stops listening; a connection it had accepted from the backlog at that moment is
                # closed before any byte of an answer (no handler ran: the client may retry, as HTTP clients do)
                clean = "refused" in str(exc).lower() or "without response" in str(exc)
                outcomes.append("refused" if clean else f"broken {exc}")
                time.sleep(0.05)

    clients = [threading.Thread(target=traffic) for _ in range(4)]
    for client in clients:
        client.start()
    while outcomes.count("200") < 20:  # traffic is flowing
        time.sleep(0.05)
    os.killpg(server.process.pid, sig)
    server.process.wait(timeout=30)  # inside SageMaker's 30 s grace period (1.5-1.8 s here)
    time.sleep(0.5)
    stop.set()
    for client in clients:
        client.join(timeout=35)
    log = server.log()
    unclean = [o for o in outcomes if o not in ("200", "refused") and not o.startswith("503 ")]
    assert unclean == [], unclean[:5]
    assert server.process.returncode in (0, 128 + sig, -sig), server.process.returncode
    assert "Traceback" not in log, log[-3000:]
    assert "event=shutdown reason=signal" in log


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
