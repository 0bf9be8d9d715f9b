"""Script mode: the user's own training script, run by sagemaker-training's environment and runner.

A job that names a script (the SDK's ``entry_point`` arrives as ``sagemaker_program``, its
``source_dir`` as ``sagemaker_submit_directory``) runs it instead of our trainer. sagemaker-training
4.9.0 does what it does in AWS's framework containers: fetches the code into /opt/ml/code, installs
its requirements.txt, sets ``SM_CHANNEL_*``, ``SM_HPS``, ``SM_MODEL_DIR``, ``SM_NUM_GPUS`` and the rest,
passes the hyperparameters as flags, streams the output, and writes ``output/failure`` (or
``output/success``). We plug in where AWS's PyTorch container does, ``SAGEMAKER_TRAINING_MODULE``
(``script_runner``), and decide two things ourselves:

- processes: one per host (the toolkit's process runner), or with the SDK's
  ``distribution={"torch_distributed": {"enabled": True}}`` our torchrun launch (``launcher``), one
  process per GPU, else one; ``sagemaker_mpi_num_of_processes_per_host`` overrides that, as it does
  in the toolkit's own runners;
- host names: one host never waits for its own name (``SM_STUDIO_LOCAL_MODE`` turns the toolkit's
  15-minute wait off); several hosts wait for their peers with our timeout.

SIGTERM is passed on to the script, so that it can save a checkpoint within SageMaker's 30 s.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
from dataclasses import dataclass

import psutil

from image_classifier import params
from image_classifier.environment import TrainingEnvironment
from image_classifier.errors import UserError
from image_classifier.metrics import format_line

log = logging.getLogger("image_classifier.script_mode")
# SDK distribution settings whose launchers (mpirun, smddprun, parameter servers, XLA) are not in this image
UNSUPPORTED_DISTRIBUTIONS = {
    "sagemaker_mpi_enabled": "mpi",
    "sagemaker_pytorch_ddp_enabled": "pytorchddp",
    "sagemaker_distributed_dataparallel_enabled": "smdistributed",
    "sagemaker_parameter_server_enabled": "parameter_server",
    "sagemaker_multi_worker_mirrored_strategy_enabled": "multi_worker_mirrored_strategy",
    "sagemaker_pytorch_xla_multi_worker_enabled": "pytorchxla",
}
SHELLS = frozenset({"sh", "dash", "bash"})  # the toolkit starts the script through /bin/sh -c


@dataclass(frozen=True)
class Plan:
    processes_per_host: int
    torchrun: bool


def _decoded(raw: str | None):
    """A hyperparameter as the SDK writes it: JSON-encoded (``"true"``, ``"\\"train.py\\""``) or plain."""
    if raw is None:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return raw


def _enabled(raw: str | None) -> bool:
    return str(_decoded(raw)).lower() == "true"


def plan(env: TrainingEnvironment, gpus: int) -> Plan:
    """How many processes run the script on each host, and whether torchrun starts them."""
    hps = env.hyperparameters
    unsupported = [name for key, name in UNSUPPORTED_DISTRIBUTIONS.items() if _enabled(hps.get(key))]
    if unsupported:
        raise UserError(
            f"distribution {unsupported[0]!r} is not supported by this image; "
            'use distribution={"torch_distributed": {"enabled": True}} (torchrun)'
        )
    if not _enabled(hps.get(params.TORCH_DISTRIBUTED_PARAM)):
        return Plan(1, False)
    asked = _decoded(hps.get(params.PROCESSES_PER_HOST_PARAM))
    try:
        procs = int(asked) if asked not in (None, "") else max(1, gpus)
    except (TypeError, ValueError):
        raise UserError(f"{params.PROCESSES_PER_HOST_PARAM}={asked!r} is not an integer") from None
    if procs < 1:
        raise UserError(f"{params.PROCESSES_PER_HOST_PARAM}={procs} must be at least 1")
    return Plan(procs, True)


plan_made: Plan | None = None  # made by run(); read by script_runner.framework_main, which the toolkit calls without arguments
cleared_on_start: list[str] = []  # switches we set for the toolkit that the user's script must not see


def run(env: TrainingEnvironment, argv: list[str], gpus: int) -> int:
    """The user's script under sagemaker-training's trainer; its exit code."""
    global plan_made
    if argv:
        raise UserError(f"train flags {argv} configure our trainer; in script mode the hyperparameters reach the script as flags")
    plan_made = plan(env, gpus)
    env.failure_file.parent.mkdir(parents=True, exist_ok=True)  # SageMaker's /opt/ml/output: the toolkit writes there
    os.environ[params.TRAINING_MODULE_ENV] = "image_classifier.training.script_runner:framework_main"
    if params.STUDIO_LOCAL_MODE_ENV not in os.environ:
        os.environ[params.STUDIO_LOCAL_MODE_ENV] = "true"  # no toolkit DNS wait: rendezvous() waits for peers
        cleared_on_start.append(params.STUDIO_LOCAL_MODE_ENV)
    program = _decoded(env.hyperparameters.get(params.PROGRAM_PARAM)) or os.environ.get(params.USER_PROGRAM_ENV)
    log.info(
        format_line(
            "script_mode", program=str(program), processes_per_host=plan_made.processes_per_host, torchrun=str(plan_made.torchrun).lower()
        )
    )
    forward_termination()
    from sagemaker_training import trainer

    try:
        trainer.train()
    except SystemExit as done:  # the toolkit ends with sys.exit(code) once the failure file is written
        return done.code if isinstance(done.code, int) else 1
    return 0


def forward_termination() -> None:
    """SIGTERM/SIGINT to the user's process (torchrun passes it on to its workers).

    ``train`` is PID 1 in the container and the toolkit starts the script through ``/bin/sh -c``, which
    does not pass signals on: without this the script would only ever see SageMaker's SIGKILL."""

    def forward(signum, _frame) -> None:
        for child in psutil.Process().children():
            with contextlib.suppress(psutil.Error):
                for target in child.children() if child.name() in SHELLS else [child]:
                    target.send_signal(signum)
        log.info(format_line("signal_forwarded", signal=signal.Signals(signum).name))

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, forward)
