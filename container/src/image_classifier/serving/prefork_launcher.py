"""What multi-model-server runs as its "python": hands the worker's start to the pre-forked interpreter.

multi-model-server 1.1.11 starts every model's worker itself (``PYTHON_EXECUTABLE mms/model_service_worker.py
--sock-name ... --model-path ...``), so each worker pays torch's imports again (≈ 2 s on 2 CPU cores).
``serve`` names this module's console script, ``serve-worker-python``, as MMS's python: it starts in
≈ 20 ms (the standard library only), passes its arguments, folder, environment and standard streams to
``serving.prefork`` over a Unix socket, and stays as the process MMS knows: it forwards the signals it gets to the worker and exits with the worker's status.
MMS stops a worker with SIGKILL on this process: the pre-forked interpreter sees the socket close and
kills the worker.

Where the pre-forked interpreter is absent, not ready to take this worker, or declines (a model with its
own code, an environment it cannot apply), this process becomes the plain interpreter (``exec``), exactly
what MMS would have started.
"""

import json
import os
import signal
import socket
import struct
import sys
import time

SOCKET_ENV = "IMAGE_CLASSIFIER_PREFORK_SOCKET"
FIRST_REPLY_SECONDS = 60.0  # its imports take 2-10 s; past this, start a plain interpreter
FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)


def plain_interpreter() -> None:
    os.execv(sys.executable, [sys.executable, *sys.argv[1:]])


def request() -> bytes:
    body = json.dumps({"argv": sys.argv[1:], "cwd": os.getcwd(), "env": dict(os.environ)}).encode()
    return struct.pack("!I", len(body)) + body


def wait_for_worker(conn: socket.socket, pid: int, lines: list[bytes], rest: bytes) -> int:
    """The worker's exit status from the pre-forked interpreter; where it goes away first, poll the pid."""

    def forward(signum: int, _frame: object) -> None:
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass

    for sig in FORWARDED:
        signal.signal(sig, forward)
    while True:
        for line in lines:
            word, _, value = line.decode().partition(" ")
            if word == "exit":
                return int(value)
        try:
            chunk = conn.recv(4096)
        except InterruptedError:
            continue
        if not chunk:
            break
        *lines, rest = (rest + chunk).split(b"\n")
    while True:  # the pre-forked interpreter is gone; its worker may not be
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return 1
        time.sleep(0.5)


def main() -> int:
    path = os.environ.get(SOCKET_ENV, "")
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.connect(path)
        socket.send_fds(conn, [request()], [0, 1, 2])
    except OSError:
        conn.close()
        plain_interpreter()
    rest = b""
    conn.settimeout(FIRST_REPLY_SECONDS)
    while b"\n" not in rest:
        try:
            chunk = conn.recv(4096)
        except OSError:  # no answer in time, or its imports failed and it closed
            chunk = b""
        if not chunk:  # it went without taking the worker (it checks for this before it forks)
            conn.close()
            plain_interpreter()
        rest += chunk
    conn.settimeout(None)
    first, *lines, rest = rest.split(b"\n")
    word, _, value = first.decode().partition(" ")
    if word != "pid":  # "fallback <reason>"
        conn.close()
        plain_interpreter()
    return wait_for_worker(conn, int(value), lines, rest)


if __name__ == "__main__":
    sys.exit(main())
