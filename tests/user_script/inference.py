"""A user's own inference code (``code/inference.py`` in model.tar.gz), sagemaker-inference's contract.

It serves the model ``train.py`` writes (no model card of ours): its own ``model_fn``, an ``input_fn``
for ``text/csv`` (one image of 8x8 grey pixels in 0..1 per row) and an ``output_fn``; ``predict_fn``
is left out, so the image's own one runs the ``nn.Module`` (as AWS's PyTorch container does).
"""

import json
from pathlib import Path

import torch
from sagemaker_inference.errors import GenericInferenceToolkitError

CLASSES: list[str] = []


def model_fn(model_dir):
    CLASSES[:] = json.loads((Path(model_dir) / "classes.json").read_text())
    layer = torch.nn.Linear(64, len(CLASSES))
    layer.load_state_dict(torch.load(Path(model_dir) / "model.pt", weights_only=True))
    return layer.eval()


def input_fn(input_data, content_type, context=None):  # the optional context argument of the contract
    if content_type != "text/csv":
        raise GenericInferenceToolkitError(415, f"this model reads text/csv, not {content_type}")
    rows = [[float(v) for v in line.split(",")] for line in input_data.strip().splitlines()]
    if any(len(row) != 64 for row in rows):
        raise ValueError("every row needs 64 pixel values")
    return torch.tensor(rows)


def output_fn(prediction, accept):
    labels = [CLASSES[i] for i in prediction.argmax(dim=1).tolist()]
    if accept == "text/csv":
        return "\n".join(labels) + "\n", "text/csv"
    return json.dumps({"labels": labels, "model": "nearest-centroid"}), "application/json"
