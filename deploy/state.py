"""What one pipeline run created, saved after every step so each step can run alone later.

``deploy/runs/<run-id>/state.json`` holds job names, the model artifact URIs and the endpoint
names; ``deploy/runs/latest`` names the newest run, which a step without ``--run-id`` continues.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from image_classifier.atomic import atomic_target

STATE_FILE = "state.json"
LATEST_FILE = "latest"


class RunState(BaseModel):
    run_id: str
    image_uri: str | None = None
    channels: dict[str, str] = Field(default_factory=dict)  # channel name -> s3 uri
    tuning_job: str | None = None
    best_job: str | None = None
    best_hyperparameters: dict[str, str] = Field(default_factory=dict)
    best_model_data: str | None = None
    final_job: str | None = None
    final_model_data: str | None = None
    model_name: str | None = None
    endpoint: str | None = None
    multi_model_endpoint: str | None = None
    transform_job: str | None = None
    transform_output: str | None = None
    clarify_job: str | None = None
    results: dict[str, Any] = Field(default_factory=dict)

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
    path = runs_dir / run_id / STATE_FILE
    if path.is_file():
        return RunState.model_validate(json.loads(path.read_text()))
    return RunState(run_id=run_id)
