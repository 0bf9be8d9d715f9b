"""deploy/train_and_deploy.ipynb runs top to bottom against the emulator, so it cannot rot.

Cells run one at a time in a real Jupyter kernel (nbclient); between them the test seeds what
the emulator cannot produce (tests/aws/seeding.py), exactly as the pipeline test does.
"""

from __future__ import annotations

import json
import os

import nbformat
from nbclient import NotebookClient

from tests.aws import seeding
from tests.aws.conftest import BUCKET, REGION, ROLE, SDK_CHATTER
from tests.helpers import REPO_ROOT

NOTEBOOK = REPO_ROOT / "deploy" / "train_and_deploy.ipynb"


def _output_text(cell) -> str:
    parts = []
    for output in cell.get("outputs", []):
        parts.append(output.get("text", ""))
        parts.append(output.get("data", {}).get("text/plain", ""))
    return "".join(parts)


def test_notebook_runs_every_step(aws, digits_job, digits_data, tmp_path):
    base, _ = digits_job
    model_dir, output_dir = base / "model", base / "output" / "data"
    pretrained = tmp_path / "pretrained"
    pretrained.mkdir()
    from safetensors.torch import save_file
    from torch import zeros

    save_file({"stand_in": zeros(1)}, str(pretrained / "resnet18.safetensors"))
    sample = sorted((digits_data / "test" / "digit_5").glob("*.png"))[0]
    answer = seeding.Answers(model_dir).json(sample, top_k=5)
    aws.queue_endpoint_results([answer, answer])  # the real-time endpoint's query, then the serverless one's
    aws.post("/moto-api/static/sagemaker/async-endpoint-results", json.dumps({"results": [{"data": answer}]}).encode())
    runs = tmp_path / "runs"
    env = {
        **os.environ,
        "IC_REGION": REGION,
        "IC_ROLE_ARN": ROLE,
        "IC_BUCKET": BUCKET,
        "IC_MODEL": "resnet18",
        "IC_RUNS_DIR": str(runs),
        "IC_STREAM_LOGS": "false",
        "IC_HYPERPARAMETERS": json.dumps({"image_size": "32"}),
        "IC_NB_DATA": str(digits_data),
        "IC_NB_PRETRAINED_DIR": str(pretrained),
        "IC_NB_SAMPLE": str(sample),
        "IC_NB_CREATE_ENDPOINTS": "true",
        "IC_NB_OPTIONAL": "",
        "IC_NB_HOSTING": "async,serverless",
        "IC_NB_ENDPOINT": "nb-prod",
    }
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = NotebookClient(notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOK.parent)}})
    outputs: dict[str, str] = {}  # the kernel starts in the notebook's folder, as Jupyter starts it
    with client.setup_kernel(env=env):
        for index, cell in enumerate(notebook.cells):
            tag = (cell.metadata.get("tags") or [""])[0]
            run_id = (runs / "latest").read_text().strip() if (runs / "latest").is_file() else None
            if tag == "best":
                tuning_job = f"ic-tune-{run_id}-1"  # names carry the attempt
                seeding.tuning_results(tuning_job, {"image_size": "32"}, model_dir)
            if tag == "train":
                seeding.final_job_outputs(f"image-classifier/runs/{run_id}/final/ic-final-{run_id}-1", model_dir, output_dir)
            if tag == "drift":  # what the endpoint would have captured: the sample, 40 times, and its answer
                seeding.captured("nb-prod", [seeding.capture_record(sample.read_bytes(), "image/png", answer)] * 40, "07")
            client.execute_cell(cell, index)
            if cell.cell_type == "code":
                outputs[tag] = _output_text(cell)

    top = json.loads(answer)["predictions"][0]["top_k"]
    assert "run_id=" in outputs["setup"]
    assert not [n for text in outputs.values() for n in SDK_CHATTER if n in text], outputs  # only our lines (deploy/quiet.py)
    assert "check=role status=ok" in outputs["check"] and "event=check_done problems=0" in outputs["check"], outputs["check"]
    assert "'train':" in outputs["data"] and "'pretrained':" in outputs["data"]
    for scale in seeding.TRIAL_LR_SCALES:
        assert f" {scale} " in outputs["best"], outputs["best"]
    assert "best: FakeTrainingJobName" in outputs["best"] and "'lr_scale': '1.2'" in outputs["best"]
    assert "status: completed" in outputs["train"] and "test_acc" in outputs["train"]
    assert "image/png" in json.dumps([c.get("outputs") for c in notebook.cells if (c.metadata.get("tags") or [""])[0] == "curves"])
    assert all(f"{e['probability']:.3f}  {e['label']}" in outputs["deploy"] for e in top), outputs["deploy"]
    assert "async answer, read from s3://" in outputs["hosting"], outputs["hosting"]
    assert "event=autoscaling" in outputs["hosting"] and "from_zero=HasBacklogWithoutCapacity" in outputs["hosting"]
    assert outputs["hosting"].count(f"{top[0]['probability']:.3f}  {top[0]['label']}") == 2  # async, then serverless
    assert "event=registered group=image-classifier version=1" in outputs["promote"], outputs["promote"]
    assert "event=model_version version=1 status=Approved" in outputs["promote"] and "event=promoted endpoint=nb-prod" in outputs["promote"]
    assert "event=drift endpoint=nb-prod predictions=40 unreadable=0" in outputs["drift"], outputs["drift"]
    assert "event=retired endpoint=nb-prod" in outputs["drift"]
    assert "event=cleanup_done" in outputs["cleanup"]
    assert not [c for c in notebook.cells if any(o.get("output_type") == "error" for o in c.get("outputs", []))]
