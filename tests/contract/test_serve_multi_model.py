"""Multi-model endpoint: models loaded, invoked and unloaded as SageMaker does it."""

from __future__ import annotations

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


def test_loading_a_missing_folder_is_a_404(mme):
    response = requests.post(f"{mme.url}/models", json={"model_name": "ghost", "url": "/nonexistent/model"}, timeout=30)
    assert response.status_code == 404 and "error" in response.json()
    assert requests.post(f"{mme.url}/models", data=b"not json", timeout=30).status_code == 400
