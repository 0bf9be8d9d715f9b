"""Which code serves a model: the model's own ``code/inference.py``, or ours. Decided before a worker loads it.

sagemaker-inference's contract: a model folder holding ``code/<SAGEMAKER_PROGRAM>`` (default
``code/inference.py``; the SDK's ``PyTorchModel(entry_point=...)`` packs it there) is served by that
module's ``model_fn``/``input_fn``/``predict_fn``/``output_fn`` (``user_transformer``), each one it
leaves out by ours. A module with its own ``model_fn`` needs no model card of ours; without one, our
``model_fn`` loads the artifact, which is then checked here like any of ours. ``code/requirements.txt``
is installed first, where the network allows; where it does not, the model is refused with pip's reason.

The front calls this (torch-free), so the module is read, never imported: user code runs only in the
model's own workers.
"""

from __future__ import annotations

import ast
import logging
import os
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from image_classifier import params
from image_classifier.errors import UserError
from image_classifier.serving.artifact import check_artifact

log = logging.getLogger(__name__)
PIP_SECONDS = 900  # a generous bound: SageMaker's own container start-up timeout is longer


@dataclass(frozen=True)
class UserCode:
    module: Path
    has_model_fn: bool


def program(environ: Mapping[str, str]) -> str:
    """The module's file name, as sagemaker-inference reads it (an empty value is the default)."""
    return environ.get(params.USER_PROGRAM_ENV) or params.DEFAULT_USER_PROGRAM


def find(model_dir: Path, environ: Mapping[str, str]) -> UserCode | None:
    module = model_dir / params.USER_CODE_DIR / program(environ)
    if not module.is_file():
        return None
    return UserCode(module, defines(module, "model_fn"))


def defines(module: Path, name: str) -> bool:
    """True if the module binds ``name`` at its top level (``def``, assignment or import)."""
    try:
        tree = ast.parse(module.read_bytes(), filename=str(module))
    except (SyntaxError, ValueError) as exc:
        raise UserError(f"{params.USER_CODE_DIR}/{module.name} is not valid Python: {exc}") from None
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name == name:
            return True
        if isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(isinstance(t, ast.Name) and t.id == name for t in targets):
                return True
        if isinstance(node, ast.Import | ast.ImportFrom) and any((a.asname or a.name) == name for a in node.names):
            return True
    return False


def prepare(model_dir: Path, environ: Mapping[str, str], multi_model: bool) -> UserCode | None:
    """The model's code (its requirements installed), or None: ours serves it. UserError if neither can."""
    code = find(model_dir, environ)
    if code is None and not multi_model and environ.get(params.USER_PROGRAM_ENV):
        raise UserError(
            f"{params.USER_PROGRAM_ENV}={environ[params.USER_PROGRAM_ENV]} but the model has no "
            f"{params.USER_CODE_DIR}/{program(environ)}: put it in model.tar.gz (PyTorchModel(entry_point=...) does)"
        )
    if code is None or not code.has_model_fn:
        check_artifact(model_dir)  # our model_fn loads it
    if code is not None:
        install_requirements(model_dir / params.USER_CODE_DIR / params.REQUIREMENTS_FILE)
        log.info(
            "event=user_code model_dir=%s module=%s/%s model_fn=%s",
            model_dir,
            params.USER_CODE_DIR,
            code.module.name,
            "user" if code.has_model_fn else "ours",
        )
    return code


def install_requirements(requirements: Path) -> None:
    """``pip install -r`` into the serving environment, as sagemaker-inference does at start."""
    if not requirements.is_file():
        return
    command = [sys.executable, "-m", "pip", "install", "--disable-pip-version-check", "-r", str(requirements)]
    if os.environ.get(params.CODEARTIFACT_ENV):
        from sagemaker_inference.model_server import _get_codeartifact_index

        command += ["-i", _get_codeartifact_index()]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=PIP_SECONDS)
    except subprocess.TimeoutExpired:
        raise UserError(f"{params.USER_CODE_DIR}/{params.REQUIREMENTS_FILE} not installed within {PIP_SECONDS}s") from None
    sys.stdout.write(result.stdout + result.stderr)  # pip's own lines, in the log as the toolkit shows them
    if result.returncode != 0:
        errors = [line for line in result.stderr.splitlines() if line.startswith("ERROR")] or result.stderr.splitlines()[-1:]
        raise UserError(
            f"{params.USER_CODE_DIR}/{params.REQUIREMENTS_FILE} could not be installed (no network, or a package pip "
            f"cannot find): {' '.join(errors)[:400]}"
        )
    log.info("event=requirements_installed file=%s", requirements)
