"""The pre-forked worker interpreter: torch and the serving code imported once, every model's worker forked from it.

Why: multi-model-server starts each model's worker as a new Python process, which imports torch,
torchvision and our serving code again (≈ 2 s of a worker's start on 2 CPU cores). ``serve`` starts this
process beside multi-model-server's JVM, so the imports run while Java starts; multi-model-server's
"python" is ``prefork_launcher``, which hands each worker's start here. A worker forked from here
begins with every module imported: the first model is ready sooner, and a model loaded later on a
multi-model endpoint (and a worker restarted after a crash) skips the imports entirely. The workers
share the imported pages with this process (copy on write).

Why forking is safe here: nothing in this process runs a tensor operation, so no OpenMP or CUDA state
exists to be copied half-made (importing torch starts no compute threads; CUDA initialises on first
use, in the worker). OpenMP reads its settings when torch loads, so a worker whose environment differs
in such a variable, and a model with its own code (it may import anything, or have installed its own
requirements), gets a plain interpreter instead: the launcher then runs what MMS would have run.

    python -m image_classifier.serving.prefork --socket PATH    # started by serving.mms.ModelServer
"""

from __future__ import annotations

import argparse
import ctypes
import importlib
import json
import logging
import os
import runpy
import select
import selectors
import signal
import socket
import struct
import sys
import tempfile
import time
import traceback
from collections.abc import Mapping
from pathlib import Path

from image_classifier.logs import setup_logging
from image_classifier.serving import user_code

log = logging.getLogger("image_classifier.prefork")
# what a worker of ours imports (transformer pulls torch, torchvision, PIL, safetensors, our model code) and
# multi-model-server's own worker; timm, imported on first use, only where a timm model asks for it
PRELOAD = (
    "torch",
    "torchvision",
    "image_classifier.serving.transformer",
    "image_classifier.serving.handler_service",
    "mms.model_service_worker",
)
WORKER_SCRIPT = "mms/model_service_worker.py"
# read when a library loads (OpenMP, MKL, the allocator, torch, the interpreter), not when it is used
LOAD_TIME_PREFIXES = ("OMP_", "GOMP_", "KMP_", "MKL_", "LD_", "MALLOC_", "PYTORCH_", "TORCH_", "PYTHON")
APPLIED_AT_FORK = ("PYTHONPATH",)  # put on sys.path in the worker, as the interpreter would
MAX_REQUEST_BYTES = 1 << 20
PR_SET_CHILD_SUBREAPER = 36  # linux/prctl.h


def preload(modules: tuple[str, ...] = PRELOAD) -> None:
    for name in modules:
        importlib.import_module(name)


def argument(argv: list[str], flag: str) -> str | None:
    return argv[argv.index(flag) + 1] if flag in argv[:-1] else None


def fork_refusal(argv: list[str], env: Mapping[str, str], own_env: Mapping[str, str]) -> str | None:
    """Why this worker start must not be forked from here (None: it may)."""
    if not argv or not argv[0].endswith(WORKER_SCRIPT):
        return "not_a_worker_start"
    for key in sorted(set(env) | set(own_env)):
        if key.startswith(LOAD_TIME_PREFIXES) and key not in APPLIED_AT_FORK and env.get(key) != own_env.get(key):
            return f"{key}_differs"
    model_path = argument(argv, "--model-path")
    if model_path is not None and user_code.find(Path(model_path), env) is not None:
        return "the_model_has_its_own_code"
    return None


def read_request(conn: socket.socket) -> tuple[dict, list[int]]:
    """One launcher's request: a length, its JSON (argv, cwd, env) and its three standard streams."""
    conn.settimeout(10.0)
    data, fds, _flags, _addr = socket.recv_fds(conn, 65536, 3)
    try:
        if len(data) < 4 or len(fds) != 3:
            raise ValueError("a request without its length or its three streams")
        (length,) = struct.unpack("!I", data[:4])
        if length > MAX_REQUEST_BYTES:
            raise ValueError(f"a request of {length} bytes")
        body = data[4:]
        while len(body) < length:
            chunk = conn.recv(length - len(body))
            if not chunk:
                raise ValueError("the launcher closed mid-request")
            body += chunk
        return json.loads(body), fds
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
    finally:
        conn.settimeout(None)


def show_command_line(argv: list[str] | None = None) -> None:
    """What ``ps``, psutil and monitoring read: the worker command multi-model-server started, not this server's.
    Called once without ``argv`` at start: setproctitle claims the memory it rewrites before any fork."""
    try:
        from setproctitle import getproctitle, setproctitle
    except ImportError:  # the worker runs the same without it; only its name in ps differs
        return
    if argv is None:
        getproctitle()
    else:
        setproctitle(" ".join([sys.executable, *argv]))


def become_subreaper() -> None:
    """A worker's own children (multi-model-server's worker forks one per connection) outlive it when
    multi-model-server kills the worker on an unload: as a subreaper this process inherits and reaps them,
    instead of leaving zombies to ``serve``, PID 1 in a container. Linux only; elsewhere nothing changes."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def cuda_driver_loaded(maps: str) -> bool:
    """The CUDA driver in this process (``/proc/self/maps``) means something initialised CUDA while importing: a
    forked worker would inherit a driver state it cannot use, so no worker is forked. torch loads it on first use."""
    return "libcuda.so" in maps


def gone(conn: socket.socket) -> bool:
    """A launcher sends nothing after its request: anything readable now is its end closing."""
    readable, _, _ = select.select([conn], [], [], 0)
    return bool(readable)


def exit_code(status: int) -> int:
    code = os.waitstatus_to_exitcode(status)
    return 128 - code if code < 0 else code


class ForkServer:
    """One thread, one selector: launcher connections, their workers, and SIGCHLD through a wake-up pipe."""

    def __init__(self, listener: socket.socket):
        self.listener = listener
        self.selector = selectors.DefaultSelector()
        self.workers: dict[int, socket.socket | None] = {}  # pid -> its launcher's connection (None: gone)
        self.wake_read, self.wake_write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    def run(self) -> None:
        become_subreaper()
        signal.set_wakeup_fd(self.wake_write)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        self.selector.register(self.listener, selectors.EVENT_READ, "accept")
        self.selector.register(self.wake_read, selectors.EVENT_READ, "reap")
        while True:
            for key, _ in self.selector.select():
                if key.data == "accept":
                    self.accept()
                elif key.data == "reap":
                    self.reap()
                else:
                    self.launcher_readable(key.fileobj, key.data)  # type: ignore[arg-type]

    def accept(self) -> None:
        conn, _ = self.listener.accept()
        try:
            request, fds = read_request(conn)
        except (OSError, ValueError) as exc:
            log.warning("event=worker_not_forked reason=bad_request detail=%s", str(exc).replace(" ", "_"))
            conn.close()
            return
        if gone(conn):  # it waited too long for the imports and started a plain interpreter
            for fd in fds:
                os.close(fd)
            conn.close()
            return
        argv, env = list(request.get("argv", [])), dict(request.get("env", {}))
        reason = fork_refusal(argv, env, os.environ)
        if reason is not None:
            for fd in fds:
                os.close(fd)
            log.info("event=worker_not_forked reason=%s model=%s", reason, argument(argv, "--model-name"))
            conn.sendall(f"fallback {reason}\n".encode())
            conn.close()
            return
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            self.become_worker(conn, fds, argv, str(request.get("cwd", ".")), env)  # never returns
        for fd in fds:
            os.close(fd)
        self.workers[pid] = conn
        self.selector.register(conn, selectors.EVENT_READ, pid)
        conn.sendall(f"pid {pid}\n".encode())
        log.info("event=worker_forked pid=%d model=%s", pid, argument(argv, "--model-name"))

    def launcher_readable(self, conn: socket.socket, pid: int) -> None:
        """A launcher says nothing after its request: readable means it is gone (MMS's SIGKILL). Its worker goes too."""
        try:
            data = conn.recv(64)
        except OSError:
            data = b""
        if data:
            return
        self.selector.unregister(conn)
        conn.close()
        self.workers[pid] = None
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def reap(self) -> None:
        try:
            while os.read(self.wake_read, 512):
                pass
        except BlockingIOError:
            pass
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            conn = self.workers.pop(pid, None)
            code = exit_code(status)
            log.info("event=worker_exited pid=%d code=%d", pid, code)
            if conn is not None:
                self.selector.unregister(conn)
                try:
                    conn.sendall(f"exit {code}\n".encode())
                except OSError:
                    pass
                conn.close()

    def become_worker(self, conn: socket.socket, fds: list[int], argv: list[str], cwd: str, env: dict[str, str]) -> None:
        """In the forked child: this server's state dropped, the launcher's streams, folder, environment and
        arguments taken, then multi-model-server's worker script run as ``__main__``."""
        code = 1
        try:
            signal.set_wakeup_fd(-1)
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            self.selector.close()
            for sock in (self.listener, conn, *(c for c in self.workers.values() if c is not None)):
                sock.close()
            os.close(self.wake_read)
            os.close(self.wake_write)
            for target, fd in enumerate(fds):
                os.dup2(fd, target)
                os.close(fd)
            os.chdir(cwd)
            os.environ.clear()
            os.environ.update(env)
            tempfile.tempdir = None
            script = argv[0]
            sys.argv = argv
            show_command_line(argv)
            sys.path[0] = os.path.dirname(os.path.realpath(script))
            extra = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and p not in sys.path]
            sys.path[1:1] = extra
            logging.root.handlers.clear()  # the worker script configures logging itself (basicConfig)
            logging.root.setLevel(logging.WARNING)
            runpy.run_path(script, run_name="__main__")
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        except BaseException:  # noqa: BLE001 - the worker's own failure, printed where MMS reads it; the exit status says it
            traceback.print_exc()
        finally:
            try:
                sys.stdout.flush()
                sys.stderr.flush()
            finally:
                os._exit(code)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--socket", type=Path, required=True)
    parser.add_argument("--preload", default=",".join(PRELOAD), help="modules imported before any fork (comma-separated)")
    args = parser.parse_args(argv)
    setup_logging()
    show_command_line()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(args.socket))
    listener.listen(64)  # before the imports: a launcher that comes early waits in the backlog
    started = time.perf_counter()
    try:
        preload(tuple(name for name in args.preload.split(",") if name))
    except Exception as exc:  # noqa: BLE001 - a worker then starts as a plain interpreter and reports the error itself
        log.warning("event=prefork_failed reason=%s", f"{type(exc).__name__}:{exc}".replace(" ", "_"))
        listener.close()
        return
    if cuda_driver_loaded(Path("/proc/self/maps").read_text()):
        log.warning("event=prefork_failed reason=the_imports_loaded_the_CUDA_driver")  # its state must not be forked
        listener.close()
        return
    log.info("event=prefork_ready seconds=%.2f modules=%d", time.perf_counter() - started, len(sys.modules))
    ForkServer(listener).run()


if __name__ == "__main__":
    main()
