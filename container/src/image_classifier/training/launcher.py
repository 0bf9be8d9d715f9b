"""Fine-tune a pretrained image classifier under the SageMaker training contract.

The ``train`` console script: flags, failure file, host checks, torchrun, exit codes.

    train                                   # as SageMaker runs it: hyperparameters.json
    train --model resnet18 --epochs 3       # flags override the JSON, one per hyperparameter

One process per host runs this. With more than one process in the job (several GPUs, several
hosts, or ``processes_per_host``) it starts ``torchrun``, which runs this same module again in
each worker (``LOCAL_RANK`` is then set, and the worker calls ``train.main`` directly).

A job that names a script (the SDK's ``entry_point``: ``sagemaker_program``) runs that script
instead, through sagemaker-training (``script_mode``); the GPU check and the failure file stay ours.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import subprocess
import sys
import traceback
from pathlib import Path

from image_classifier import defaults, gpu_host, local_run, params
from image_classifier.environment import TrainingEnvironment
from image_classifier.errors import UserError
from image_classifier.hyperparameters import SECTIONS, Hyperparameters
from image_classifier.logs import setup_logging
from image_classifier.metrics import format_line

log = logging.getLogger("image_classifier.train")
EXIT_USER_ERROR = 1
EXIT_INTERNAL_ERROR = 2
EXIT_INTERRUPTED = 143


def get_args_parser() -> argparse.ArgumentParser:
    """One flag per hyperparameter, grouped by the model's own sections; given flags override hyperparameters.json."""
    parser = argparse.ArgumentParser(prog="train", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for section in SECTIONS:
        group = parser.add_argument_group(section.title(), section.__doc__)
        for name, info in section.model_fields.items():
            default = f"({defaults.HELP[name]})" if name in defaults.HELP else f"(default: {info.default})"
            help_text = f"{info.description or ''} {default}".strip().replace("%", "%%")  # argparse formats help with %
            group.add_argument(f"--{name.replace('_', '-')}", dest=name, default=argparse.SUPPRESS, help=help_text)
    return parser


def failure_path(env: TrainingEnvironment | None) -> Path:
    if env is not None:
        return env.failure_file
    return Path(os.environ.get(params.BASE_DIR_ENV) or params.DEFAULT_BASE_DIR) / params.FAILURE_FILE


def write_failure(env: TrainingEnvironment | None, reason: str) -> None:
    """One line, first reason wins; only one process per host writes it."""
    if os.environ.get("LOCAL_RANK", "0") != "0":
        return
    path = failure_path(env)
    line = " ".join(reason.split())[:1000]
    log.error("event=failure reason=%s", line.replace(" ", "_")[:300])
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            path.write_text(line + "\n")
    except OSError as exc:
        log.error("event=failure_file_unwritable path=%s error=%s", path, exc)


def script_mode_requested(env: TrainingEnvironment) -> bool:
    """The SDK's ``entry_point`` (hyperparameter ``sagemaker_program``; ``SAGEMAKER_PROGRAM`` as the toolkit
    also reads it): the user's script runs instead of our trainer (``script_mode``)."""
    return bool(env.hyperparameters.get(params.PROGRAM_PARAM, "").strip('"') or os.environ.get(params.USER_PROGRAM_ENV))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def socket_interface_variables(env: TrainingEnvironment, environ: dict[str, str]) -> dict[str, str]:
    """NCCL and Gloo on the interface SageMaker names between hosts (as its own toolkit sets it).

    Left alone on one host, and where the user already chose an interface."""
    if not env.is_multi_host or not env.network_interface_name:
        return {}
    names = (params.NCCL_SOCKET_IFNAME_ENV, params.GLOO_SOCKET_IFNAME_ENV)
    return {name: env.network_interface_name for name in names if name not in environ}


def usable_gpus(env: TrainingEnvironment) -> int:
    """GPUs this job trains on; a ``UserError`` when a GPU is expected and CUDA cannot be used.

    Never a silent CPU fallback on a billed GPU instance: only ``IMAGE_CLASSIFIER_ALLOW_CPU=true``
    runs such a job on the CPU (one process, as on a CPU instance)."""
    facts = gpu_host.read_host()
    expected = gpu_host.gpu_expected(facts, os.environ, env.instance_type)
    if expected is None:
        return env.num_gpus
    count, why_not = gpu_host.torch_cuda()
    if reason := gpu_host.cuda_refusal(expected, count > 0, facts, os.environ, why_not):
        raise UserError(reason)
    if count == 0:
        log.warning(format_line("cpu_fallback", reason="allowed", expected=expected.replace(" ", "_")))
    return env.num_gpus if count else 0


def rendezvous(env: TrainingEnvironment) -> tuple[str, int]:
    """torchrun's master address and port. Several hosts: once every peer's name resolves, with NCCL and
    Gloo on SageMaker's interface; one host: 127.0.0.1, so a host never needs its own name to resolve."""
    from image_classifier.training.distributed import wait_for_hosts

    if not env.is_multi_host:
        return "127.0.0.1", _free_port()
    timeout = float(os.environ.get(params.HOST_WAIT_TIMEOUT_ENV, params.DEFAULT_HOST_WAIT_SECONDS))
    wait_for_hosts([h for h in env.hosts if h != env.current_host], timeout)
    interfaces = socket_interface_variables(env, dict(os.environ))
    os.environ.update(interfaces)
    if interfaces:
        log.info(format_line("socket_interface", **interfaces))
    return env.hosts[0], params.MASTER_PORT


def torchrun_command(env: TrainingEnvironment, procs: int, master: str, port: int) -> list[str]:
    """torchrun up to what it runs (our launcher again, or a user's script in script mode)."""
    log.info(format_line("launch", nodes=len(env.hosts), node_rank=env.host_rank, procs_per_node=procs, master=master))
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nnodes={len(env.hosts)}",
        f"--node_rank={env.host_rank}",
        f"--nproc_per_node={procs}",
        f"--master_addr={master}",
        f"--master_port={port}",
    ]


def launch_torchrun(env: TrainingEnvironment, procs: int, argv: list[str]) -> int:
    master, port = rendezvous(env)
    child = subprocess.Popen([*torchrun_command(env, procs, master, port), "-m", "image_classifier.training.launcher", *argv])

    def forward(signum, _frame) -> None:
        child.send_signal(signum)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, forward)
    return child.wait()


def run(argv: list[str]) -> int:
    """The job, then (one process per host) files under a user's bind-mounted folder handed back to them."""
    is_worker = "LOCAL_RANK" in os.environ
    base = Path(os.environ.get(params.BASE_DIR_ENV) or params.DEFAULT_BASE_DIR)
    try:
        return _run(argv, base, is_worker)
    finally:
        if not is_worker:
            local_run.hand_back(base)


def _run(argv: list[str], base: Path, is_worker: bool) -> int:
    env = None
    try:
        if not is_worker:
            local_run.seed_sample(base, os.environ)
        env = TrainingEnvironment.from_env()
        if not is_worker:
            env.failure_file.unlink(missing_ok=True)
        if not is_worker and script_mode_requested(env):
            from image_classifier.training import script_mode

            return script_mode.run(env, argv, usable_gpus(env))
        overrides = {k: str(v) for k, v in vars(get_args_parser().parse_args(argv)).items()}
        hp = Hyperparameters.from_strings({**env.hyperparameters, **overrides})
        gpus = env.num_gpus if is_worker else usable_gpus(env)
        procs = hp.processes_per_host or max(1, gpus)
        if not is_worker and procs * len(env.hosts) > 1:
            code = launch_torchrun(env, procs, argv)
            if code not in (0, EXIT_INTERRUPTED, -signal.SIGTERM):
                write_failure(env, f"distributed training exited with code {code}; see the job log")
            return code
        from image_classifier.training.engine import StopRequested
        from image_classifier.training.train import main

        try:
            main(env, hp)
        except StopRequested as stop:
            log.info(format_line("interrupted", signal=str(stop)))
            return EXIT_INTERRUPTED
        return 0
    except UserError as exc:
        write_failure(env, str(exc))
        return EXIT_USER_ERROR
    except SystemExit as exc:  # argparse
        if exc.code not in (0, None):
            write_failure(env, f"invalid command-line arguments: {argv}")
        return int(exc.code or 0)
    except Exception as exc:  # noqa: BLE001 - every failure path leaves its reason behind
        traceback.print_exc()
        write_failure(env, f"internal error: {type(exc).__name__}: {exc}")
        return EXIT_INTERNAL_ERROR


def cli() -> None:
    setup_logging()
    code = run(sys.argv[1:])
    stop_loader_workers()
    sys.exit(code)


def stop_loader_workers() -> None:
    """Loader workers still alive when the job ends (it failed or was stopped inside an epoch) are killed.

    They ignore SIGTERM (``inputs.ignore_group_signals``), which is also how multiprocessing's exit
    handler would ask them to go before waiting for them: without this, a job that stopped mid-epoch
    waited for its workers forever after writing its failure file."""
    import multiprocessing

    for child in multiprocessing.active_children():
        child.kill()
        child.join(timeout=5)


if __name__ == "__main__":
    cli()
