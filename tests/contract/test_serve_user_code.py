"""`serve` with a model's own inference code (tests/user_script/inference.py), sagemaker-inference's contract.

The model is what the user's training script wrote in script mode (no model card of ours); its
``code/`` holds ``inference.py`` (``model_fn``, ``input_fn`` for text/csv, ``output_fn``; our
``predict_fn`` runs the ``nn.Module``) and a ``requirements.txt``. The front's guarantees around it:
a truthful /ping, the size limit, JSON errors that name the failing function, a worker that lives on.
"""

from __future__ import annotations

import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image

from tests.helpers import USER_SCRIPT_DIR, ServeProcess
from tests.reliability import model_workers, worker_fingerprint

PAYLOAD_MB = 1


def user_model(script_job, dest: Path, inference: str | None = None, requirements: str | None = None) -> Path:
    """A serving base dir: the script-mode model with ``code/`` as PyTorchModel(entry_point=...) packs it."""
    model = dest / "model"
    shutil.copytree(script_job[0] / "model", model)
    (model / "code").mkdir()
    (model / "code" / "inference.py").write_text(inference or (USER_SCRIPT_DIR / "inference.py").read_text())
    (model / "code" / "requirements.txt").write_text(requirements or (USER_SCRIPT_DIR / "requirements.txt").read_text())
    return dest


def csv_row(path: Path) -> str:
    with Image.open(path) as image:
        return ",".join(f"{v:.4f}" for v in np.asarray(image.convert("L").resize((8, 8)), dtype=np.float32).ravel() / 255)


@pytest.fixture(scope="module")
def rows(digits_data) -> list[tuple[str, str]]:
    """(CSV row, true label) for every test image."""
    return [(csv_row(p), p.parent.name) for p in sorted((digits_data / "test").glob("digit_*/*.png"))]


@pytest.fixture(scope="module")
def server(script_job, tmp_path_factory):
    base = user_model(script_job, tmp_path_factory.mktemp("user-model"))
    proc = ServeProcess(base, tmp_path_factory.mktemp("serve-user"), SAGEMAKER_MAX_PAYLOAD_IN_MB=str(PAYLOAD_MB))
    proc.seen_before_ready = proc.wait_ready()
    proc.model_dir = base / "model"
    yield proc
    proc.stop()


def _post(server, body, content_type: str, accept: str | None = None) -> requests.Response:
    headers = {"Content-Type": content_type, **({"Accept": accept} if accept else {})}
    return requests.post(f"{server.url}/invocations", data=body, headers=headers, timeout=60)


def test_start_up_installs_requirements_and_ping_waits_for_model_fn(server):
    assert server.seen_before_ready[-1] == 200 and 503 in server.seen_before_ready
    log = server.log()
    assert "event=requirements_installed" in log and "Requirement already satisfied: numpy" in log
    assert "module=code/inference.py model_fn=user" in log
    assert not (server.model_dir / "model_card.json").exists()  # the user's model_fn needs none of ours


def test_csv_in_through_the_users_functions(server, rows):
    response = _post(server, "\n".join(row for row, _ in rows), "text/csv")
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"] == "application/json"  # the output_fn's, passed through
    answer = response.json()
    assert answer["model"] == "nearest-centroid" and len(answer["labels"]) == len(rows) == 200
    accuracy = np.mean([got == label for got, (_, label) in zip(answer["labels"], rows, strict=True)])
    assert accuracy >= 0.8, accuracy  # nearest centroid on 8x8 digits: ~0.88
    as_csv = _post(server, rows[0][0], "text/csv", accept="text/csv")
    assert as_csv.status_code == 200 and as_csv.headers["Content-Type"] == "text/csv"
    assert as_csv.text == answer["labels"][0] + "\n"


def test_concurrent_requests_reach_the_functions_one_by_one(server, rows):
    """No cross-request batching for user code: its input_fn sees each client's own body and type."""
    expected = _post(server, "\n".join(row for row, _ in rows[:32]), "text/csv").json()["labels"]
    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda row: _post(server, row[0], "text/csv"), rows[:32]))
    assert [a.status_code for a in answers] == [200] * 32
    assert [a.json()["labels"] for a in answers] == [[label] for label in expected]


def test_errors_are_json_naming_the_function_and_the_worker_lives(server, rows, sample_images):
    workers = worker_fingerprint(server), sorted(p.pid for p in model_workers(server))
    raised = _post(server, "1,2,3", "text/csv")
    assert raised.status_code == 500
    assert raised.json() == {"error": "input_fn raised ValueError: every row needs 64 pixel values"}
    refused = _post(server, sample_images["png"], "image/png")  # the user's input_fn raises a 415 of the toolkit's
    assert refused.status_code == 415 and refused.json() == {"error": "input_fn: this model reads text/csv, not image/png"}
    not_text = _post(server, b"\xff\xfe,1", "text/csv")
    assert not_text.status_code == 400 and "UTF-8" in not_text.json()["error"]
    too_big = _post(server, b"0," * (PAYLOAD_MB * 1024 * 1024), "text/csv")
    assert too_big.status_code == 413 and "limit" in too_big.json()["error"]
    assert "Traceback" not in raised.text + refused.text + not_text.text
    assert _post(server, rows[0][0], "text/csv").status_code == 200
    assert (worker_fingerprint(server), sorted(p.pid for p in model_workers(server))) == workers
    assert "event=user_code_failed function=input_fn error=ValueError" in server.log()


def test_explanations_are_refused_with_the_reason(server, rows):
    """The image explains the models it serves itself, not another network behind the user's functions."""
    response = requests.post(
        f"{server.url}/invocations",
        data=rows[0][0],
        headers={"Content-Type": "text/csv", "X-Amzn-SageMaker-Custom-Attributes": "explain=gradcam"},
        timeout=30,
    )
    assert response.status_code == 400 and "own inference code" in response.json()["error"]


def _start_fails(base: Path, tmp: Path, **env: str) -> str:
    proc = ServeProcess(base, tmp, **env)
    code = proc.process.wait(timeout=180)
    proc.stop()
    assert code == 1, proc.log()[-3000:]
    return proc.log()


@pytest.mark.slow
def test_explanations_from_the_environment_stop_start_up_with_the_reason(script_job, tmp_path):
    log = _start_fails(user_model(script_job, tmp_path / "user"), tmp_path / "serve", IMAGE_CLASSIFIER_EXPLAIN="gradcam")
    assert "event=serve_failed reason=IMAGE_CLASSIFIER_EXPLAIN=gradcam_but_this_model_is_served_by_its_own_inference_code" in log


def test_a_failing_model_fn_stops_start_up_with_the_reason(script_job, tmp_path):
    broken = (
        (USER_SCRIPT_DIR / "inference.py")
        .read_text()
        .replace("def model_fn(model_dir):\n", 'def model_fn(model_dir):\n    raise RuntimeError("weights missing")\n')
    )
    log = _start_fails(user_model(script_job, tmp_path / "base", inference=broken), tmp_path / "serve")
    assert "event=user_code_failed function=model_fn error=RuntimeError" in log
    assert "event=serve_failed reason=the_model_failed_to_load_in_multi-model-server" in log and "its_own_code_failed" in log


def test_requirements_without_network_stop_start_up(script_job, tmp_path):
    """Where pip cannot reach an index (here: --no-index, as under network isolation), serve_failed says so."""
    base = user_model(script_job, tmp_path / "base", requirements="--no-index\nimage-classifier-absent-package\n")
    log = _start_fails(base, tmp_path / "serve")
    assert "event=serve_failed reason=code/requirements.txt_could_not_be_installed_(no_network" in log
    assert "image-classifier-absent-package" in log and "event=mms_started" not in log


def test_a_named_program_missing_from_the_model_stops_start_up(digits_job, tmp_path):
    log = _start_fails(digits_job[0], tmp_path / "serve", SAGEMAKER_PROGRAM="inference.py")
    assert "event=serve_failed reason=SAGEMAKER_PROGRAM=inference.py_but_the_model_has_no_code/inference.py" in log
