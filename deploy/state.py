"""What one pipeline run created, saved after every step so each step can run alone later.

``deploy/runs/<run-id>/state.json`` holds job names, the model artifact URIs and the endpoint
names; ``deploy/runs/latest`` names the newest run, which a step without ``--run-id`` continues.
``resources`` lists every SageMaker resource the run asked for, written *before* the request is
sent, so that an interrupted run still knows what to stop or delete (``deploy.teardown``).

A run id becomes part of every job and endpoint name (``ic-tune-<run>-<attempt>``, at most 32
characters for tuning jobs), so it follows SageMaker's name pattern and stays short.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from image_classifier.atomic import atomic_target

STATE_FILE = "state.json"
LATEST_FILE = "latest"
RUN_ID_MAX = 20  # "ic-tune-" + run id + "-" + attempt (3 digits) fits SageMaker's 32 for tuning jobs
_RUN_ID = re.compile(r"^[a-zA-Z0-9](-*[a-zA-Z0-9])*$")  # SageMaker's job and endpoint name pattern


class RunIdError(ValueError):
    """A run id SageMaker could not carry in its names."""


def check_run_id(run_id: str) -> str:
    if not _RUN_ID.match(run_id) or len(run_id) > RUN_ID_MAX:
        raise RunIdError(
            f"run id {run_id!r}: letters, digits and inner hyphens only, at most {RUN_ID_MAX} characters "
            "(it becomes part of every job and endpoint name)"
        )
    return run_id


class Resource(BaseModel):
    """One resource a run asked for (SageMaker's, an autoscaling target, an alarm): ``kind`` is a key of ``deploy.teardown.KINDS``."""

    kind: str
    name: str


class RunState(BaseModel):
    run_id: str
    attempts: dict[str, int] = Field(default_factory=dict)  # name kind -> attempts so far (names are unique per attempt)
    resources: list[Resource] = Field(default_factory=list)
    classes: list[str] = Field(default_factory=list)  # from the data step, in index order
    services: dict[str, str] = Field(default_factory=dict)  # debugger/profiler/clarify -> what they ended up as
    image_uri: str | None = None
    channels: dict[str, str] = Field(default_factory=dict)  # channel name -> s3 uri
    sharded: list[str] = Field(default_factory=list)  # channels uploaded as shards: jobs read them with FastFile
    tuning_job: str | None = None
    best_job: str | None = None
    best_hyperparameters: dict[str, str] = Field(default_factory=dict)
    best_model_data: str | None = None
    final_job: str | None = None
    final_model_data: str | None = None
    model_name: str | None = None
    endpoint: str | None = None
    multi_model_endpoint: str | None = None
    async_endpoint: str | None = None  # its model and config share the name
    serverless_endpoint: str | None = None
    scaling: dict[str, list[str]] = Field(default_factory=dict)  # endpoint -> its scaling policies (and alarm)
    transform_job: str | None = None
    transform_output: str | None = None
    clarify_job: str | None = None
    results: dict[str, Any] = Field(default_factory=dict)
    registered_version: int | None = None  # the final model's version in the registry group (deploy.registry)

    def folder(self, runs_dir: Path) -> Path:
        return runs_dir / self.run_id

    def save(self, runs_dir: Path) -> Path:
        folder = self.folder(runs_dir)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / STATE_FILE
        with atomic_target(path) as tmp:
            tmp.write_text(self.model_dump_json(indent=2))
        (runs_dir / LATEST_FILE).write_text(self.run_id + "\n")
        return path


def new_run_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime())


def load_state(runs_dir: Path, run_id: str | None) -> RunState:
    """The named run, else the latest one, else a new run."""
    if run_id is None and (runs_dir / LATEST_FILE).is_file():
        run_id = (runs_dir / LATEST_FILE).read_text().strip()
    if run_id is None:
        return RunState(run_id=new_run_id())
    check_run_id(run_id)
    path = runs_dir / run_id / STATE_FILE
    if path.is_file():
        return RunState.model_validate(json.loads(path.read_text()))
    return RunState(run_id=run_id)
