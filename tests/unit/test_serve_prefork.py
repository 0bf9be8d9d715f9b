"""The pre-forked worker interpreter (serving/prefork.py) and the launcher multi-model-server runs as its python.

A real fork server and real launcher processes, with a stand-in ``mms/model_service_worker.py`` that reports
what it was given (its pid, folder, arguments, environment, streams) so each promise can be checked without
multi-model-server; tests/contract runs the real one through it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from image_classifier.serving.mms import LAUNCHER
from image_classifier.serving.prefork import cuda_driver_loaded, fork_refusal
from image_classifier.serving.prefork_launcher import SOCKET_ENV

WORKER = """
import json, os, signal, sys, time
mode = sys.argv[sys.argv.index("--mode") + 1]
if mode == "term":  # before the report: the test signals as soon as it has read it
    signal.signal(signal.SIGTERM, lambda *_: (print("got SIGTERM", flush=True), os._exit(3)))
report = {"pid": os.getpid(), "cwd": os.getcwd(), "argv": sys.argv[1:], "marker": os.environ.get("MARKER"),
          "json_preloaded": "json" in sys.modules and "email" in sys.modules, "stdin": sys.stdin.readline().strip()}
print(json.dumps(report), flush=True)
print("to stderr", file=sys.stderr, flush=True)
if mode == "exit":
    sys.exit(7)
if mode == "orphan":  # as MMS's worker does: a child per connection, which outlives a killed parent
    child = os.fork()
    if child == 0:
        time.sleep(0.5)
        os._exit(0)
    print(json.dumps({"orphan": child}), flush=True)
    os._exit(0)
while True:
    time.sleep(0.1)
"""


@pytest.fixture
def worker_script(tmp_path):
    script = tmp_path / "site" / "mms" / "model_service_worker.py"
    script.parent.mkdir(parents=True)
    script.write_text(WORKER)
    return script


@pytest.fixture
def fork_server(tmp_path):
    """The fork server with a light preload (json, email) instead of torch: what is checked here is the forking."""
    socket_path = tmp_path / "prefork.sock"
    log = tmp_path / "prefork.log"
    with open(log, "w") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "image_classifier.serving.prefork", "--socket", str(socket_path), "--preload", "json,email"],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    deadline = time.monotonic() + 30
    while "event=prefork_ready" not in log.read_text():
        assert process.poll() is None and time.monotonic() < deadline, log.read_text()
        time.sleep(0.05)
    yield socket_path, log
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def launch(tmp_path, script, socket_path, mode, **env):
    return subprocess.Popen(
        [str(Path(sys.executable).with_name(LAUNCHER)), str(script), "--model-name", "m1", "--mode", mode],
        cwd=tmp_path,
        env={**os.environ, SOCKET_ENV: str(socket_path), "MARKER": "from-launcher", **env},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def first_report(process) -> dict:
    process.stdin.write("hello\n")
    process.stdin.flush()
    return json.loads(process.stdout.readline())


def test_a_worker_is_forked_with_the_launchers_folder_arguments_environment_and_streams(tmp_path, worker_script, fork_server):
    socket_path, log = fork_server
    process = launch(tmp_path, worker_script, socket_path, "exit")
    report = first_report(process)
    _, err = process.communicate(timeout=30)
    assert process.returncode == 7  # the worker's own status, through the launcher
    assert report["pid"] != process.pid  # a fork of the server, not the launcher itself
    assert report["json_preloaded"]  # what the server imported before forking is there already
    assert report["cwd"] == str(tmp_path)
    assert report["argv"] == ["--model-name", "m1", "--mode", "exit"]
    assert report["marker"] == "from-launcher" and report["stdin"] == "hello"
    assert err.strip() == "to stderr"
    text = log.read_text()
    assert f"event=worker_forked pid={report['pid']} model=m1" in text
    assert f"event=worker_exited pid={report['pid']} code=7" in text


def test_a_signal_to_the_launcher_reaches_the_worker(tmp_path, worker_script, fork_server):
    process = launch(tmp_path, worker_script, fork_server[0], "term")
    first_report(process)
    process.send_signal(signal.SIGTERM)
    out, _ = process.communicate(timeout=30)
    assert "got SIGTERM" in out and process.returncode == 3


def test_a_killed_launcher_takes_its_worker_with_it(tmp_path, worker_script, fork_server):
    """multi-model-server stops a worker with SIGKILL on the process it started: the launcher."""
    process = launch(tmp_path, worker_script, fork_server[0], "sleep")
    worker = first_report(process)["pid"]
    shown = Path(f"/proc/{worker}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    assert str(worker_script) in shown and "--model-name m1" in shown  # ps shows what MMS started (setproctitle)
    process.kill()
    process.wait()
    reaped = f"event=worker_exited pid={worker} code=137"  # logged as the server reaps it (its /proc entry goes then)
    deadline = time.monotonic() + 10
    while reaped not in fork_server[1].read_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert reaped in fork_server[1].read_text()
    assert not Path(f"/proc/{worker}").exists()


@pytest.mark.parametrize(
    ("how", "env"),
    [
        ("no server", {SOCKET_ENV: "/nonexistent/prefork.sock"}),
        ("declined: OpenMP read at load", {"OMP_NUM_THREADS": "17"}),
    ],
)
def test_where_it_cannot_fork_the_launcher_becomes_the_plain_interpreter(tmp_path, worker_script, fork_server, how, env):
    process = launch(tmp_path, worker_script, fork_server[0], "exit", **env)
    report = first_report(process)
    process.communicate(timeout=30)
    assert report["pid"] == process.pid  # exec: the same process, now the interpreter MMS would have started
    assert process.returncode == 7 and report["marker"] == "from-launcher" and report["stdin"] == "hello"
    if how.startswith("declined"):
        assert "event=worker_not_forked reason=OMP_NUM_THREADS_differs model=m1" in fork_server[1].read_text()


def test_a_server_whose_imports_fail_sends_its_launchers_to_the_plain_interpreter(tmp_path, worker_script):
    socket_path = tmp_path / "prefork.sock"
    server = subprocess.run(
        [sys.executable, "-m", "image_classifier.serving.prefork", "--socket", str(socket_path), "--preload", "no_such_module_here"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert server.returncode == 0 and "event=prefork_failed reason=ModuleNotFoundError" in server.stdout
    process = launch(tmp_path, worker_script, socket_path, "exit")
    assert first_report(process)["pid"] == process.pid
    process.communicate(timeout=30)


def test_what_is_not_forked(tmp_path):
    worker = "/venv/site-packages/mms/model_service_worker.py"
    own = {"OMP_NUM_THREADS": "2", "PYTHONPATH": "/a", "HOME": "/root"}
    assert fork_refusal([worker, "--model-path", str(tmp_path)], {**own, "PYTHONPATH": "/a:/model", "HOME": "/x"}, own) is None
    assert fork_refusal(["/somewhere/else.py"], own, own) == "not_a_worker_start"
    assert fork_refusal([worker], {**own, "OMP_NUM_THREADS": "1"}, own) == "OMP_NUM_THREADS_differs"
    assert fork_refusal([worker], {**own, "LD_PRELOAD": "/lib/x.so"}, own) == "LD_PRELOAD_differs"
    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "inference.py").write_text("def model_fn(model_dir):\n    return None\n")
    assert fork_refusal([worker, "--model-path", str(tmp_path)], own, own) == "the_model_has_its_own_code"


def test_no_worker_is_forked_once_the_imports_have_loaded_the_cuda_driver():
    loaded = "7f0000000000-7f0000100000 r-xp 00000000 08:01 42 /usr/lib/x86_64-linux-gnu/libcuda.so.580.65.06\n"
    assert cuda_driver_loaded(loaded)
    assert not cuda_driver_loaded("7f0000000000-7f0000100000 r-xp 00000000 08:01 43 /opt/venv/lib/libcudart.so.13\n")


def test_the_children_a_worker_leaves_behind_are_reaped_not_left_as_zombies(tmp_path, worker_script, fork_server):
    process = launch(tmp_path, worker_script, fork_server[0], "orphan")
    first_report(process)
    orphan = json.loads(process.stdout.readline())["orphan"]
    process.communicate(timeout=30)
    reaped = f"event=worker_exited pid={orphan} code=0"  # the fork server adopted it (a subreaper) and reaped it
    deadline = time.monotonic() + 10
    while reaped not in fork_server[1].read_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert reaped in fork_server[1].read_text()
    assert not Path(f"/proc/{orphan}").exists()
