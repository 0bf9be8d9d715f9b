"""The fast paths in a real ``serve``: the default settings batch across requests and answer exactly
like in-process inference; a forced bf16 reaches the workers and stays close to fp32."""

from __future__ import annotations

import io
import re
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
import torch
from PIL import Image

from image_classifier.serving.codec import decode_image
from image_classifier.serving.fast_paths import MIN_COSINE
from image_classifier.serving.model import LoadedModel
from tests.helpers import ServeProcess


@pytest.fixture(scope="module")
def photos(digits_data) -> list[bytes]:
    out = []
    for path in sorted((digits_data / "test").rglob("*.png"))[:24]:
        buffer = io.BytesIO()
        Image.open(path).convert("RGB").resize((64, 48)).save(buffer, format="JPEG", quality=90)
        out.append(buffer.getvalue())
    return out


def _serve(digits_job, tmp_path_factory, **env: str):
    proc = ServeProcess(digits_job[0], tmp_path_factory.mktemp("serve-fast"), **env)
    proc.wait_ready()
    return proc


def _post_all(url: str, photos: list[bytes], concurrency: int) -> list[list[dict]]:
    def call(photo: bytes) -> list[dict]:
        response = requests.post(f"{url}/invocations", data=photo, headers={"Content-Type": "image/jpeg"}, timeout=60)
        assert response.status_code == 200, response.text
        return response.json()["predictions"][0]["top_k"]

    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        return list(pool.map(call, photos))


def _expected(model: LoadedModel, photo: bytes) -> list[float]:
    return model.predict([decode_image(photo, draft_size=model.draft_size)])[0]


def test_default_settings_batch_across_requests_and_answer_like_in_process(digits_job, tmp_path_factory, photos):
    server = _serve(digits_job, tmp_path_factory)  # no serving variable set: the defaults
    try:
        answers = _post_all(server.url, photos * 3, concurrency=16)
    finally:
        server.stop()
    log = server.log()
    decision = re.search(r"event=fast_path decided_by=rule chosen=(\w+) graph=(\w+) reason=(\w+)", log)
    assert decision, log[-3000:]
    assert decision.group(1) == "fp32" and decision.group(3) in ("small_model", "no_bf16_units")  # the same choice in every process
    reference = LoadedModel(digits_job[0] / "model", graph=decision.group(2))
    for photo, top_k in zip(photos * 3, answers, strict=True):
        expected = _expected(reference, photo)
        for entry in top_k:
            assert entry["probability"] == pytest.approx(expected[entry["index"]], abs=1e-4)
    images = [int(n) for n in re.findall(r"event=batch requests=\d+ accepted=\d+ images=(\d+)", log)]
    assert max(images) > 1, "the default settings never batched concurrent requests"


def test_forced_bf16_reaches_the_workers_and_stays_close_to_fp32(digits_job, tmp_path_factory, photos):
    server = _serve(digits_job, tmp_path_factory, IMAGE_CLASSIFIER_PRECISION="bf16", IMAGE_CLASSIFIER_GRAPH="frozen")
    try:
        answers = _post_all(server.url, photos, concurrency=1)
    finally:
        server.stop()
    assert "event=fast_path decided_by=user chosen=bf16 graph=frozen reason=forced" in server.log()
    bf16 = LoadedModel(digits_job[0] / "model", precision="bf16", graph="frozen")
    fp32 = LoadedModel(digits_job[0] / "model", precision="fp32", graph="eager")
    for photo, top_k in zip(photos, answers, strict=True):
        same_mode = _expected(bf16, photo)
        for entry in top_k:
            assert entry["probability"] == pytest.approx(same_mode[entry["index"]], abs=1e-3)
    # close to fp32, judged on the logits (as serve judges bf16 at load) rather than on the calibrated
    # probabilities, which magnify bf16's error by 1/T (T = 0.3 here): a near-tie moved by 0.18 in one
    # run. This small model's logits are not as robust as ResNet-50's (cosine 0.9998): min 0.985 seen,
    # which is why forcing is needed here (serve's own choice asks MIN_COSINE of every probe image)
    cosine = torch.nn.functional.cosine_similarity(_logits(bf16, photos), _logits(fp32, photos), dim=1)
    assert float(cosine.mean()) >= MIN_COSINE and float(cosine.min()) >= 0.95, cosine.tolist()


@torch.inference_mode()
def _logits(model: LoadedModel, photos: list[bytes]) -> torch.Tensor:
    tensors = [model.prepare(decode_image(photo, draft_size=model.draft_size)) for photo in photos]
    return model.runner(torch.stack(tensors).contiguous(memory_format=torch.channels_last)).float()
