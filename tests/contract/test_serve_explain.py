"""Explanations from the running model (docs/serving.md#explanations): where the answer is known, and over HTTP.

The model: ImageNet-pretrained EfficientNet-Lite0 (the offline weights, as a user's ``pretrained``
channel) with its head trained by ``train`` on digits pasted at a random place on a black 224 px
canvas (tests/pasted_digits.py). Only the digit carries evidence, so a faithful heatmap peaks on it.
``freeze=head`` with cached features keeps the run to seconds.
"""

from __future__ import annotations

import base64
import io
import json
import math
import re
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
import torch
from PIL import Image

from image_classifier import params
from image_classifier.data.loading import load_rgb
from image_classifier.serving.model import LoadedModel
from tests.helpers import ServeProcess, run_train
from tests.pasted_digits import boxes, write_pasted_digits
from tests.reliability import FIGURES

CANVAS, DIGIT = 224, 48
PASTED_HPS = {
    "model": "tf_efficientnet_lite0",
    "pretrained": "true",
    "image_size": str(CANVAS),
    "epochs": "10",
    "batch_size": "32",
    "lr": "0.01",
    "freeze": "head",
    "augment": "none",
    "num_workers": "1",
    "seed": "3",
}
EXPLAIN = params.CUSTOM_ATTRIBUTES_HEADER


@pytest.fixture(scope="module")
def pasted(tmp_path_factory, lite0_weights):
    data = write_pasted_digits(
        tmp_path_factory.mktemp("pasted-data"),
        canvas=CANVAS,
        digit=DIGIT,
        margin=28,  # inside the eval transform's centre crop
        per_class={"train": 50, "validation": 10, "test": 10},
    )
    base = tmp_path_factory.mktemp("pasted-job")
    result = run_train(base, data, PASTED_HPS, channels={"pretrained": lite0_weights.parent})
    assert result.returncode == 0, result.stdout[-4000:]
    return data, base


@pytest.fixture(scope="module")
def model(pasted):
    return LoadedModel(pasted[1] / "model")


def _png(path) -> bytes:
    buffer = io.BytesIO()
    Image.open(path).save(buffer, format="PNG")
    return buffer.getvalue()


def _crop_box(model: LoadedModel, box: list[int], canvas: int) -> tuple[float, ...]:
    """A canvas box in the model's input crop (resize of the shorter side, then the centre crop)."""
    size = model.card.preprocessing.input_size
    resized = math.floor(size / model.card.preprocessing.crop_pct)
    offset = round((resized - size) / 2)
    return tuple(v * resized / canvas - offset for v in box)


def _peak_in_box(heat: torch.Tensor, box: tuple[float, ...], tolerance: float) -> bool:
    y, x = divmod(int(heat.flatten().argmax()), heat.shape[1])
    left, top, right, bottom = box
    return left - tolerance <= x + 0.5 <= right + tolerance and top - tolerance <= y + 0.5 <= bottom + tolerance


def test_the_heatmap_peaks_on_the_pasted_digit(pasted, model):
    """For most test images the peak lies in the digit's box, far above a heatmap that always peaks at the centre.

    Grad-CAM's map has one cell per 32 px (7x7 at 224 px): its peak may fall up to half a cell outside
    the box. Saliency and Integrated Gradients are per pixel: no tolerance."""
    data, _ = pasted
    known = {k: v for k, v in boxes(data).items() if k.startswith("test/")}
    names = sorted(known)
    tensors = [model.prepare(load_rgb(data / name)) for name in names]
    probabilities = model.predict_tensors(tensors)
    predicted = [max(range(len(row)), key=row.__getitem__) for row in probabilities]
    accuracy = sum(model.classes[p] == name.split("/")[1] for p, name in zip(predicted, names, strict=True)) / len(names)
    assert accuracy >= 0.6, accuracy  # a trained model, not chance (0.1)
    crop_boxes = [_crop_box(model, known[name], CANVAS) for name in names]
    size = model.card.preprocessing.input_size
    centre = torch.zeros(size, size)
    centre[size // 2, size // 2] = 1
    cell = size / params.EXPLAIN_GRID
    rates = {"accuracy": round(accuracy, 3), "images": len(names)}
    for method, count, tolerance in (("gradcam", len(names), cell / 2), ("saliency", len(names), 0.0), ("integrated_gradients", 10, 0.0)):
        picked = range(0, len(names), len(names) // count)  # one per class for the slow method
        batch = torch.stack([tensors[i] for i in picked]).contiguous(memory_format=torch.channels_last)
        heat = model.explainer.heatmaps(method, batch, [predicted[i] for i in picked])
        hits = sum(_peak_in_box(h, crop_boxes[i], tolerance) for h, i in zip(heat, picked, strict=True))
        baseline = sum(_peak_in_box(centre, crop_boxes[i], tolerance) for i in picked)
        rates[method] = round(hits / len(picked), 3)
        rates[f"{method}_centre_baseline"] = round(baseline / len(picked), 3)
        assert hits / len(picked) >= 0.75, (method, rates)
        assert hits / len(picked) >= baseline / len(picked) + 0.3, (method, rates)
    FIGURES["explain_peak_in_box"] = rates


@pytest.fixture(scope="module")
def server(pasted, tmp_path_factory):
    proc = ServeProcess(
        pasted[1], tmp_path_factory.mktemp("serve-explain"), IMAGE_CLASSIFIER_BATCH_SIZE="8", IMAGE_CLASSIFIER_MAX_BATCH_DELAY_MS="50"
    )
    proc.wait_ready()
    yield proc
    assert proc.stop() == 0


def _test_images(pasted, count: int) -> list:
    data, _ = pasted
    return sorted((data / "test").rglob("*.png"))[:: 100 // count][:count]


def _close(a, b) -> bool:
    """Grids computed in different batches agree to their 3 decimals (up to float summation order)."""
    return torch.allclose(torch.tensor(a), torch.tensor(b), atol=2e-3)


def _post(url: str, body: bytes, content_type: str, attributes: str | None = None, accept: str | None = None) -> requests.Response:
    headers = {"Content-Type": content_type}
    if attributes is not None:
        headers[EXPLAIN] = attributes
    if accept is not None:
        headers["Accept"] = accept
    return requests.post(url, data=body, headers=headers, timeout=120)


def test_one_image_explained_as_the_package_explains_it(server, pasted, model):
    path = _test_images(pasted, 1)[0]
    response = _post(f"{server.url}/invocations", _png(path), "image/png", "explain=gradcam")
    assert response.status_code == 200, response.text
    prediction = response.json()["predictions"][0]
    explanation = prediction["explanation"]
    tensor = model.prepare(load_rgb(path))
    expected = model.explain("gradcam", [tensor], [explanation["index"]])[0]
    assert explanation["method"] == "gradcam" and explanation["label"] == prediction["label"]
    assert explanation["probability"] == pytest.approx(prediction["probability"])
    assert _close(explanation["grid"], expected["grid"])
    grid = torch.tensor(explanation["grid"])
    assert grid.shape == (params.EXPLAIN_GRID, params.EXPLAIN_GRID) and float(grid.min()) >= 0 and float(grid.max()) == 1.0
    overlay = Image.open(io.BytesIO(base64.b64decode(explanation["overlay_png"], validate=True)))
    assert overlay.format == "PNG" and overlay.size == (CANVAS, CANVAS)
    assert re.search(r"explain;dur=[\d.]+", response.headers["Server-Timing"])
    plain = _post(f"{server.url}/invocations", _png(path), "image/png")
    assert "explanation" not in plain.json()["predictions"][0] and "explain;" not in plain.headers["Server-Timing"]
    assert plain.json()["predictions"][0]["label"] == prediction["label"]


def test_a_json_batch_explains_the_requested_class(server, pasted):
    images = _test_images(pasted, 3)
    body = json.dumps({"instances": [{"b64": base64.b64encode(_png(p)).decode()} for p in images]}).encode()
    response = _post(
        f"{server.url}/invocations", body, "application/json", "explain=saliency,explain_class=digit_3", "application/json;verbose=true"
    )
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    assert len(predictions) == 3
    for prediction in predictions:
        explanation = prediction["explanation"]
        assert (explanation["method"], explanation["label"], explanation["index"]) == ("saliency", "digit_3", 3)
        assert explanation["probability"] == pytest.approx(prediction["probabilities"][3])
    by_index = _post(f"{server.url}/invocations", body, "application/json", "explain=saliency,explain_class=3")
    assert _close([p["explanation"]["grid"] for p in by_index.json()["predictions"]], [p["explanation"]["grid"] for p in predictions])


def test_explained_requests_go_alone_while_plain_ones_are_batched(server, pasted, model):
    """Concurrent clients, half asking for explanations: each answer is its own; plain requests still share
    forward passes, and no explanation holds up a batch of plain requests."""
    images = _test_images(pasted, 10)
    expected = [model.classes[max(range(10), key=row.__getitem__)] for row in model.predict([load_rgb(p) for p in images])]

    def call(i: int) -> requests.Response:
        return _post(f"{server.url}/invocations", _png(images[i]), "image/png", "explain=gradcam" if i % 2 == 0 else "top_k=2")

    with ThreadPoolExecutor(len(images)) as pool:
        answers = list(pool.map(call, range(len(images))))
    for i, answer in enumerate(answers):
        assert answer.status_code == 200, answer.text
        prediction = answer.json()["predictions"][0]
        assert prediction["label"] == expected[i]
        if i % 2 == 0:
            assert prediction["explanation"]["label"] == expected[i]
        else:
            assert "explanation" not in prediction and len(prediction["top_k"]) == 2
    batches = _batches(server.log())
    assert all(requests_in == 1 for requests_in, _, explained in batches if explained), batches  # explained: alone
    assert any(requests_in > 1 for requests_in, _, explained in batches if not explained), batches  # plain: still batched


def _batches(log: str) -> list[tuple[int, int, int]]:
    """(requests, images, explained images) of each envelope the (single) worker answered."""
    out: list[list[int]] = []
    for match in re.finditer(r"event=batch requests=(\d+) accepted=\d+ images=(\d+)|event=explained method=\w+ images=(\d+)", log):
        if match.group(3) is None:
            out.append([int(match.group(1)), int(match.group(2)), 0])
        elif out:
            out[-1][2] += int(match.group(3))
    return [(a, b, c) for a, b, c in out]


def test_a_worker_answers_each_request_of_a_mixed_envelope(pasted):
    """The worker's side: explained, plain and refused requests in one envelope each get their own reply."""
    from image_classifier.serving.transformer import BatchTransformer

    worker = BatchTransformer()
    worker.validate_and_initialize(str(pasted[1] / "model"))
    one, two, three = (_png(p) for p in _test_images(pasted, 3))
    attributes = params.CUSTOM_ATTRIBUTES_HEADER.lower()
    batch = json.dumps({"instances": [{"b64": base64.b64encode(image).decode()} for image in (two, three)]}).encode()
    replies, timings = worker.answer(
        [
            ({"content-type": "image/png", attributes: "explain=gradcam"}, one),
            ({"content-type": "image/png"}, two),
            ({"content-type": "image/png", attributes: "explain=gradcam,explain_class=nine"}, three),
            ({"content-type": "application/json", attributes: "explain=saliency,explain_class=digit_3"}, batch),
        ]
    )
    assert [status for status, _, _ in replies] == [200, 200, 400, 200]
    answers = [json.loads(body) if status == 200 else None for status, _, body in replies]
    assert answers[0]["predictions"][0]["explanation"]["method"] == "gradcam"
    assert "explanation" not in answers[1]["predictions"][0]
    assert "explain_class='nine'" in json.loads(replies[2][2])["error"]
    assert [p["explanation"]["label"] for p in answers[3]["predictions"]] == ["digit_3", "digit_3"]
    assert ["explain" in t for t in timings] == [True, False, False, True]
    assert timings[1]["forward"] == timings[0]["forward"]  # one forward pass for the three good requests


@pytest.mark.parametrize(
    ("attributes", "status", "words"),
    [
        ("explain=shap", 400, "explain='shap'"),
        ("explain=gradcam,explain_class=zebra", 400, "explain_class='zebra'"),
        ("explain=gradcam,explain_class=10", 400, "index below 10"),
        ("explain_class=digit_1", 400, "explain=<method>"),
    ],
)
def test_bad_methods_and_targets_are_400(server, pasted, attributes, status, words):
    response = _post(f"{server.url}/invocations", _png(_test_images(pasted, 1)[0]), "image/png", attributes)
    assert response.status_code == status and words in response.json()["error"], response.text


def test_too_many_images_to_explain_in_one_request_is_400(server, pasted):
    image = base64.b64encode(_png(_test_images(pasted, 1)[0])).decode()
    body = json.dumps({"instances": [{"b64": image}] * (params.MAX_EXPLAINED_IMAGES + 1)}).encode()
    response = _post(f"{server.url}/invocations", body, "application/json", "explain=saliency")
    assert response.status_code == 400 and f"at most {params.MAX_EXPLAINED_IMAGES}" in response.json()["error"]
    assert _post(f"{server.url}/invocations", body, "application/json").status_code == 200  # without explain= the limit is 64


@pytest.fixture(scope="module")
def batch_transform_mme(tmp_path_factory):
    """A multi-model endpoint whose environment turns explanations on, as a model or transform job's would."""
    proc = ServeProcess(
        tmp_path_factory.mktemp("mme-explain-base"),
        tmp_path_factory.mktemp("mme-explain"),
        SAGEMAKER_MULTI_MODEL="true",
        **{params.EXPLAIN_ENV: "auto"},
    )
    proc.wait_ready()
    yield proc
    assert proc.stop() == 0


def test_the_environment_explains_every_batch_transform_line(batch_transform_mme, pasted, digits_job, digits_data, script_job, tmp_path):
    from tests.contract.test_serve_user_code import user_model

    url = batch_transform_mme.url
    for name, folder in (("pasted", pasted[1] / "model"), ("digits", digits_job[0] / "model")):
        loaded = requests.post(f"{url}/models", json={"model_name": name, "url": str(folder)}, timeout=300)
        assert loaded.status_code == 200, loaded.text
    user = user_model(script_job, tmp_path / "user") / "model"
    refused = requests.post(f"{url}/models", json={"model_name": "user", "url": str(user)}, timeout=300)
    assert refused.status_code == 400 and params.EXPLAIN_ENV in refused.json()["error"] and "own inference code" in refused.json()["error"]

    images = _test_images(pasted, 3)
    body = json.dumps({"instances": [{"b64": base64.b64encode(_png(p)).decode()} for p in images]}).encode()
    lines = _post(f"{url}/models/pasted/invoke", body, "application/json", accept="application/jsonlines")
    assert lines.status_code == 200 and lines.headers["Content-Type"].startswith("application/jsonlines"), lines.text
    records = [json.loads(line) for line in lines.text.splitlines()]
    assert len(records) == 3 and all(r["explanation"]["method"] == "gradcam" and r["explanation"]["label"] == r["label"] for r in records)
    one = _post(f"{url}/models/pasted/invoke", _png(images[0]), "image/png", accept="application/jsonlines")
    assert _close([json.loads(line)["explanation"]["grid"] for line in one.text.splitlines()], [records[0]["explanation"]["grid"]])
    off = _post(f"{url}/models/pasted/invoke", _png(images[0]), "image/png", "explain=off")
    assert "explanation" not in off.json()["predictions"][0]

    # the 32 px digits ResNet pools a 1x1 map: nothing for Grad-CAM, so auto takes Integrated Gradients
    digit = sorted((digits_data / "test" / "digit_7").glob("*.png"))[0]
    auto = _post(f"{url}/models/digits/invoke", _png(digit), "image/png")
    assert auto.status_code == 200 and auto.json()["predictions"][0]["explanation"]["method"] == "integrated_gradients"
    gradcam = _post(f"{url}/models/digits/invoke", _png(digit), "image/png", "explain=gradcam")
    assert gradcam.status_code == 400 and "integrated_gradients" in gradcam.json()["error"]


def test_invoke_script_writes_the_overlay(server, pasted, tmp_path):
    import subprocess

    from tests.helpers import REPO_ROOT

    image = tmp_path / "digit.png"
    image.write_bytes(_png(_test_images(pasted, 1)[0]))
    ran = subprocess.run(
        [str(REPO_ROOT / "local" / "invoke.sh"), "--explain=gradcam", str(image), server.url],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert ran.returncode == 0, ran.stderr
    explanation = json.loads(ran.stdout)["predictions"][0]["explanation"]
    assert explanation["method"] == "gradcam" and explanation["overlay_png"] == "digit.explained.png"
    assert Image.open(tmp_path / "digit.explained.png").size == (CANVAS, CANVAS)
    assert "heatmap overlay: digit.explained.png" in ran.stderr
