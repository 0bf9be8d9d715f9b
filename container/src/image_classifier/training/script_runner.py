"""sagemaker-training's side of script mode: the framework hook its trainer calls, and our process runner.

``SAGEMAKER_TRAINING_MODULE`` names ``framework_main``, as AWS's PyTorch container names its own: the
toolkit's trainer calls it inside its failure-file handling, and it runs the toolkit's own
``entry_point.run`` (code download, requirements.txt, ``SM_*`` variables, output capture) with a
runner of ours that puts torchrun in front of the script when ``script_mode`` planned it. Imported
only in a script-mode job: importing sagemaker-training creates folders under /opt/ml.

The failure file's message is the script's own ``Type: message`` line, recorded by the script's
process (``script_hook/sitecustomize.py``), ahead of the toolkit's text: the toolkit rebuilds the
error from stderr read in chunks, and a line cut between two reads came out as two lines
(``ValueError`` / ``the user script was asked to fail``), once in three runs.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from sagemaker_training import _entry_point_type, entry_point, environment, errors, process

from image_classifier import params
from image_classifier.environment import TrainingEnvironment
from image_classifier.errors import UserError
from image_classifier.training import script_mode


def framework_main() -> None:
    """sagemaker-training's trainer calls this: its own ``entry_point.run``, with our runner."""
    toolkit = environment.Environment()
    chosen = script_mode.plan_made or script_mode.Plan(1, False)
    launch = None
    try:
        ours = TrainingEnvironment.from_env()
        if chosen.torchrun or ours.is_multi_host:
            from image_classifier.training.launcher import rendezvous, torchrun_command

            master, port = rendezvous(ours)
            if chosen.torchrun:
                launch = torchrun_command(ours, chosen.processes_per_host, master, port)
            else:  # one process per host, as AWS's PyTorch container: the script finds the master itself
                os.environ.setdefault("MASTER_ADDR", master)
                os.environ.setdefault("MASTER_PORT", str(port))
    except UserError as exc:
        raise errors.ClientError(str(exc)) from None  # the toolkit writes the reason as the failure file
    args, env_vars = toolkit.to_cmd_args(), toolkit.to_env_vars()
    runner = ScriptRunner(toolkit.user_entry_point, args, env_vars, chosen.processes_per_host, launch)
    entry_point.run(toolkit.module_dir, toolkit.user_entry_point, args, env_vars, capture_error=True, runner_type=runner)


class ScriptRunner(process.ProcessRunner):
    """The toolkit's process runner (its command, output handling and errors); ``launch`` puts torchrun in front."""

    def __init__(self, user_entry_point, args, env_vars, processes_per_host, launch: list[str] | None):
        super().__init__(user_entry_point, args, env_vars, processes_per_host)
        self.launch = launch
        self.error_file = Path(tempfile.mkdtemp(prefix="script-error-")) / "exception"

    def _setup(self) -> None:
        for name in script_mode.cleared_on_start:  # read by the toolkit before this; the script sees AWS's environment
            os.environ.pop(name, None)
        # the toolkit has written the job's PYTHONPATH into os.environ (the script's environment) by now
        os.environ[params.SCRIPT_ERROR_FILE_ENV] = str(self.error_file)
        os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HOOK_DIR), os.environ.get("PYTHONPATH")]))

    def run(self, wait=True, capture_error=False):
        try:
            return super().run(wait, capture_error)
        except errors._CalledProcessError as failed:
            raise with_recorded_exception(failed, self.error_file) from None

    def _create_command(self) -> list[str]:
        command = super()._create_command()
        if self.launch is None:
            return command
        if _entry_point_type.get(environment.code_dir, self._user_entry_point) is not _entry_point_type.PYTHON_PROGRAM:
            raise errors.ClientError(f"torch_distributed runs a Python script (*.py); {self._user_entry_point!r} is not one")
        return [*self.launch, *command[1:]]  # [python, script, *args] -> [torchrun ..., script, *args]


HOOK_DIR = Path(__file__).resolve().parent / "script_hook"


def with_recorded_exception(failed: errors._CalledProcessError, error_file: Path) -> errors._CalledProcessError:
    """The same error (class, exit code, command) with the script's one-line exception leading its message."""
    try:
        recorded = error_file.read_text().strip()
    except OSError:
        return failed  # not a Python script, or it exited without an exception: the toolkit's text alone
    toolkit = failed.output.decode("utf-8", "replace") if isinstance(failed.output, bytes) else failed.output
    output = f"{recorded}\n{toolkit}" if toolkit else recorded
    return type(failed)(cmd=failed.cmd, return_code=failed.return_code, output=output, info=failed.extra_info)
