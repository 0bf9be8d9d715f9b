"""Multi-model endpoint: models loaded, invoked and unloaded as SageMaker does it."""

from __future__ import annotations

import re
import shutil

import pytest
import requests

from tests.helpers import ServeProcess

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def mme(digits_job, tmp_path_factory):
    # SageMaker mounts /opt/ml/models/<model>/model and starts the container with no model
    proc = ServeProcess(tmp_path_factory.mktemp("mme-base"), tmp_path_factory.mktemp("mme"), SAGEMAKER_MULTI_MODEL="true")
    proc.wait_ready()
    yield proc
    proc.stop()


def test_two_models_side_by_side_then_unload(mme, digits_job, digits5_job, sample_images):
    assert requests.get(f"{mme.url}/models", timeout=10).json() == {"models": []}
    assert (
        requests.post(f"{mme.url}/invocations", data=sample_images["png"], headers={"Content-Type": "image/png"}, timeout=10).status_code
        == 404
    )
    for name, base in (("digits10", digits_job[0]), ("digits5", digits5_job)):
        response = requests.post(f"{mme.url}/models", json={"model_name": name, "url": str(base / "model")}, timeout=300)
        assert response.status_code == 200, response.text
    again = requests.post(f"{mme.url}/models", json={"model_name": "digits5", "url": str(digits5_job / "model")}, timeout=60)
    assert again.status_code == 409 and "error" in again.json()
    assert {m["modelName"] for m in requests.get(f"{mme.url}/models", timeout=10).json()["models"]} == {"digits10", "digits5"}

    answers = {}
    for name in ("digits10", "digits5"):
        response = requests.post(
            f"{mme.url}/models/{name}/invoke",
            data=sample_images["png"],
            headers={"Content-Type": "image/png", "X-Amzn-SageMaker-Custom-Attributes": "top_k=10"},
            timeout=60,
        )
        assert response.status_code == 200, response.text
        answers[name] = response.json()["predictions"][0]
    assert len(answers["digits10"]["top_k"]) == 10 and len(answers["digits5"]["top_k"]) == 5  # each its own class set
    assert {e["label"] for e in answers["digits5"]["top_k"]} == {f"digit_{d}" for d in range(5)}

    assert requests.delete(f"{mme.url}/models/digits5", timeout=60).status_code == 200
    gone = requests.post(f"{mme.url}/models/digits5/invoke", data=sample_images["png"], headers={"Content-Type": "image/png"}, timeout=30)
    assert gone.status_code == 404 and "error" in gone.json()
    assert requests.delete(f"{mme.url}/models/digits5", timeout=30).status_code == 404
    still = requests.post(f"{mme.url}/models/digits10/invoke", data=sample_images["png"], headers={"Content-Type": "image/png"}, timeout=30)
    assert still.status_code == 200
    # each model's worker was forked from the interpreter that imported torch once (serving/prefork.py)
    log = mme.log()
    assert all(re.search(rf"event=worker_forked pid=\d+ model={name}\b", log) for name in ("digits10", "digits5")), log[-3000:]


def test_loading_a_missing_folder_is_a_404(mme):
    response = requests.post(f"{mme.url}/models", json={"model_name": "ghost", "url": "/nonexistent/model"}, timeout=30)
    assert response.status_code == 404 and "error" in response.json()
    assert requests.post(f"{mme.url}/models", data=b"not json", timeout=30).status_code == 400


# an output_fn alone, on one of our artifacts: our model_fn, input_fn and predict_fn serve the rest
OUTPUT_FN_ONLY = '''
def output_fn(prediction, accept):
    """Our predict_fn's {"classes", "probabilities"}, one CSV line per image."""
    best = [max(range(len(row)), key=row.__getitem__) for row in prediction["probabilities"]]
    lines = [f"{prediction['classes'][i]},{row[i]:.6f}" for i, row in zip(best, prediction["probabilities"])]
    return "\\n".join(lines) + "\\n", "text/csv"
'''


def test_each_model_is_served_by_its_own_code_or_ours(mme, digits_job, script_job, digits_data, sample_images, tmp_path):
    from tests.contract.test_serve_user_code import csv_row, user_model

    user = user_model(script_job, tmp_path / "user") / "model"
    reformatted = tmp_path / "reformatted" / "model"
    shutil.copytree(digits_job[0] / "model", reformatted)
    (reformatted / "code").mkdir()
    (reformatted / "code" / "inference.py").write_text(OUTPUT_FN_ONLY)
    for name, url in (("ours", digits_job[0] / "model"), ("user", user), ("reformatted", reformatted)):
        response = requests.post(f"{mme.url}/models", json={"model_name": name, "url": str(url)}, timeout=300)
        assert response.status_code == 200, response.text

    png = {"data": sample_images["png"], "headers": {"Content-Type": "image/png"}, "timeout": 60}
    ours = requests.post(f"{mme.url}/models/ours/invoke", **png)
    assert ours.status_code == 200 and ours.headers["Content-Type"] == "application/json"
    top = ours.json()["predictions"][0]
    reformatted_answer = requests.post(f"{mme.url}/models/reformatted/invoke", **png)
    assert reformatted_answer.status_code == 200 and reformatted_answer.headers["Content-Type"] == "text/csv"
    label, probability = reformatted_answer.text.strip().split(",")
    assert label == top["label"] and float(probability) == pytest.approx(top["probability"], abs=1e-4)
    row = csv_row(next((digits_data / "test" / "digit_7").glob("*.png")))
    user_answer = requests.post(f"{mme.url}/models/user/invoke", data=row, headers={"Content-Type": "text/csv"}, timeout=60)
    assert user_answer.status_code == 200 and user_answer.json()["model"] == "nearest-centroid"
    refused = requests.post(f"{mme.url}/models/user/invoke", **png)  # its input_fn, not our decoder, decides
    assert refused.status_code == 415 and "input_fn" in refused.json()["error"]
    for name in ("ours", "user", "reformatted"):
        assert requests.delete(f"{mme.url}/models/{name}", timeout=60).status_code == 200
    # a model with its own code gets a fresh interpreter (it may import anything, or have installed requirements)
    log = mme.log()
    assert "event=worker_not_forked reason=the_model_has_its_own_code model=user" in log
    assert "event=worker_not_forked reason=the_model_has_its_own_code model=reformatted" in log
    assert re.search(r"event=worker_forked pid=\d+ model=ours", log)
