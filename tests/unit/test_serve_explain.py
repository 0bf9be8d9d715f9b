"""serving/explain.py and the explanation fields of codec.py, on small real networks (timm, torchvision); no server.

The heatmaps come from Captum on untrained networks here: these tests check shapes, ranges, the
layer Grad-CAM reads, the refusals and the 6 MB budget. That a heatmap lands on the object is
shown on a trained model in tests/contract/test_serve_explain.py.
"""

from __future__ import annotations

import base64
import io
import json

import pytest
import timm
import torch
import torchvision
from PIL import Image

from image_classifier import params
from image_classifier.errors import UserError
from image_classifier.serving import fast_paths
from image_classifier.serving.codec import (
    JSONLINES_TYPE,
    OVERLAY_OMITTED,
    Explanation,
    RequestError,
    ResponseOptions,
    encode_predictions,
    explain_option,
    response_options,
)
from image_classifier.serving.config import ServingConfig
from image_classifier.serving.explain import Explainer, pooled_feature_layer, resolve_target

SIZE = 64
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _status(call) -> tuple[int, str]:
    with pytest.raises(RequestError) as info:
        call()
    return info.value.status, info.value.message


def _batch(n: int = 2) -> torch.Tensor:
    return torch.randn(n, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0)).contiguous(memory_format=torch.channels_last)


def _explainer(model: torch.nn.Module, name: str) -> Explainer:
    return Explainer(model.eval(), MEAN, STD, name, lambda: _batch(1))


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    return timm.create_model("resnet18", num_classes=5).eval().to(memory_format=torch.channels_last)


@pytest.fixture(scope="module")
def vit():
    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", img_size=SIZE, patch_size=16, num_classes=5).eval()


# --- the attribute --------------------------------------------------------------------------
def test_explain_attribute_parsing():
    assert explain_option({}) is None
    assert explain_option({"explain": "GradCAM"}) == Explanation("gradcam")
    assert explain_option({"explain": "saliency", "explain_class": "dog"}) == Explanation(method="saliency", target="dog")
    assert explain_option({}, default="integrated_gradients") == Explanation("integrated_gradients")  # IMAGE_CLASSIFIER_EXPLAIN
    assert explain_option({"explain": "off"}, default="gradcam") is None  # a request may turn it off
    status, message = _status(lambda: explain_option({"explain": "shap"}))
    assert status == 400 and "shap" in message and "gradcam" in message
    status, message = _status(lambda: explain_option({"explain_class": "dog"}))
    assert status == 400 and "explain=<method>" in message
    options = response_options(None, "top_k=2,explain=auto,explain_class=1", 3)
    assert (options.top_k, options.explanation) == (2, Explanation(method="auto", target="1"))
    assert response_options(None, "top_k=2", 3).explanation is None


def test_explain_environment_is_checked_at_start():
    assert ServingConfig.from_env({params.EXPLAIN_ENV: "gradcam"}).explain == "gradcam"
    assert ServingConfig.from_env({params.EXPLAIN_ENV: "off"}).explain is None
    assert ServingConfig.from_env({}).explain is None
    with pytest.raises(UserError, match="IMAGE_CLASSIFIER_EXPLAIN='lime'"):
        ServingConfig.from_env({params.EXPLAIN_ENV: "lime"})


def test_target_by_label_or_index():
    classes = ["cat", "dog", "7"]
    assert resolve_target(None, classes) is None
    assert resolve_target("dog", classes) == 1
    assert resolve_target("0", classes) == 0
    assert resolve_target("7", classes) == 2  # a label wins over an index
    for bad in ("cow", "3", "-1", "1.5"):
        status, message = _status(lambda bad=bad: resolve_target(bad, classes))
        assert status == 400 and repr(bad) in message


# --- the layer Grad-CAM reads -----------------------------------------------------------------
def test_gradcam_reads_the_map_entering_the_global_pool(resnet, vit):
    assert pooled_feature_layer(resnet, _batch(1)) is resnet.global_pool
    tv = torchvision.models.resnet18(num_classes=5).eval()
    assert pooled_feature_layer(tv, _batch(1)) is tv.avgpool
    effnet = timm.create_model("efficientnet_b0", num_classes=5).eval()
    assert pooled_feature_layer(effnet, _batch(1)) is effnet.global_pool  # after its squeeze-excite pools
    assert pooled_feature_layer(vit, _batch(1)) is None  # tokens, no spatial map
    assert _explainer(vit, "vit_tiny").resolve("auto") == "integrated_gradients"
    assert _explainer(resnet, "resnet18").resolve("auto") == "gradcam"
    status, message = _status(lambda: _explainer(vit, "vit_tiny").resolve("gradcam"))
    assert status == 400 and "vit_tiny" in message and "integrated_gradients" in message


# --- heatmaps ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("network", "method"), [("resnet", m) for m in ("gradcam", "integrated_gradients", "saliency")] + [("vit", "saliency")]
)
def test_heatmaps_shape_and_range(request, network, method):
    model = request.getfixturevalue(network)
    heat = _explainer(model, network).heatmaps(method, _batch(3), [0, 4, 2])
    assert heat.shape == (3, SIZE, SIZE) and heat.dtype == torch.float32
    assert float(heat.min()) >= 0 and float(heat.max()) <= 1
    # each scaled to its own peak; all zero where the class has no positive evidence (an untrained Grad-CAM can say so)
    assert {round(float(h.max()), 4) for h in heat} <= {0.0, 1.0} and float(heat.max()) == pytest.approx(1.0)
    assert not any(p.grad is not None for p in model.parameters())  # input gradients only


def test_the_explanation_is_of_the_target_class(resnet):
    explainer = _explainer(resnet, "resnet18")
    batch = _batch(1)
    one, other = explainer.heatmaps("saliency", batch, [0]), explainer.heatmaps("saliency", batch, [3])
    assert not torch.allclose(one, other)
    assert torch.allclose(one, explainer.heatmaps("saliency", batch, [0]))


def test_explanation_fields(resnet):
    with torch.no_grad():
        predicted = resnet(_batch(2)).argmax(dim=1).tolist()  # an untrained net's own classes: evidence to show
    explained = _explainer(resnet, "resnet18").explain("auto", list(_batch(2)), predicted, torch.device("cpu"))
    assert [e["method"] for e in explained] == ["gradcam", "gradcam"] and [e["index"] for e in explained] == predicted
    for entry in explained:
        grid = torch.tensor(entry["grid"])
        assert grid.shape == (params.EXPLAIN_GRID, params.EXPLAIN_GRID)
        assert float(grid.min()) >= 0 and float(grid.max()) == pytest.approx(1.0)
        overlay = Image.open(io.BytesIO(base64.b64decode(entry["overlay_png"], validate=True)))
        assert overlay.format == "PNG" and overlay.size == (SIZE, SIZE) and overlay.mode == "RGB"


def test_the_eager_model_explains_what_the_frozen_graph_serves(resnet):
    """The served runner is a TorchScript graph without gradients; the eager module it came from still explains."""
    example = _batch(2)
    runner = fast_paths.build(resnet, "fp32", "frozen", example)
    with torch.inference_mode():
        assert torch.allclose(runner(example), resnet(example), atol=1e-4)
    heat = _explainer(resnet, "resnet18").heatmaps("gradcam", example, [0, 1])
    assert heat.shape == (2, SIZE, SIZE) and float(heat.max()) > 0


# --- the answer ---------------------------------------------------------------------------------
def _explained(index: int, overlay: str = "iVBORw0KGgo=") -> dict:
    return {"method": "gradcam", "index": index, "grid": [[0.0, 1.0], [0.5, 0.25]], "overlay_png": overlay}


def test_explanation_in_the_answer():
    options = ResponseOptions("application/json", 2, False, Explanation("gradcam", "fox"))
    body, _ = encode_predictions([[0.7, 0.2, 0.1]], ["cat", "dog", "fox"], options, [_explained(2)])
    explanation = json.loads(body)["predictions"][0]["explanation"]
    assert explanation == {
        "method": "gradcam",
        "label": "fox",
        "index": 2,
        "probability": 0.1,
        "grid": [[0.0, 1.0], [0.5, 0.25]],
        "overlay_png": "iVBORw0KGgo=",
    }
    lines, kind = encode_predictions(
        [[0.7, 0.2, 0.1]] * 2, ["cat", "dog", "fox"], ResponseOptions(JSONLINES_TYPE, 1, False), [_explained(0)] * 2
    )
    assert kind == JSONLINES_TYPE and [json.loads(line)["explanation"]["label"] for line in lines.decode().splitlines()] == ["cat", "cat"]
    plain, _ = encode_predictions([[0.7, 0.2, 0.1]], ["cat", "dog", "fox"], ResponseOptions("application/json", 2, False))
    assert "explanation" not in json.loads(plain)["predictions"][0]


def test_overlays_past_the_response_limit_are_left_out_not_the_predictions():
    big = "A" * (params.MAX_RESPONSE_BYTES // 3)  # three fit with nothing else; two fit with the rest of the answer
    rows = [[0.6, 0.4]] * 5
    body, _ = encode_predictions(
        rows, ["a", "b"], ResponseOptions("application/json", 2, False, Explanation("gradcam")), [_explained(0, big)] * 5
    )
    assert len(body) <= params.MAX_RESPONSE_BYTES
    predictions = json.loads(body)["predictions"]
    assert len(predictions) == 5 and all(p["label"] == "a" and p["explanation"]["grid"] for p in predictions)
    kept = [p["explanation"]["overlay_png"] is not None for p in predictions]
    assert kept == [True, True, False, False, False]
    assert all(p["explanation"]["overlay_omitted"] == OVERLAY_OMITTED for p in predictions[2:])
    assert "overlay_omitted" not in predictions[0]["explanation"]
