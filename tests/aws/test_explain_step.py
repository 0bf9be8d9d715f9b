"""The explain step against the emulator: a batch transform whose environment turns explanations on, and its gallery.

The emulator runs no container: each ``.out`` is seeded with what the image's own handler
(``BatchTransformer``, with ``IMAGE_CLASSIFIER_EXPLAIN`` as the job sets it) answers for that test
image, from the session's real digits model. What the step sent is read back from the recorder.
"""

from __future__ import annotations

import base64
import json
import re

import boto3
import pytest
from PIL import Image

from deploy import pipeline
from deploy.config import load_config
from image_classifier import params
from tests.aws import seeding
from tests.aws.conftest import BUCKET, REGION, ROLE

PER_CLASS = 2


@pytest.fixture
def cfg(aws, tmp_path):
    return load_config(
        overrides={
            "region": REGION,
            "role_arn": ROLE,
            "bucket": BUCKET,
            "runs_dir": str(tmp_path / "runs"),
            "tags": {"team": "vision"},
            "explain_method": "saliency",
            "stream_logs": False,
        },
        environ={},
    )


@pytest.fixture(scope="module")
def handler(digits_job):
    """The image's handler as a transform job's container runs it: explanations on from the environment."""
    from image_classifier.serving.transformer import BatchTransformer

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(params.EXPLAIN_ENV, "saliency")
        transformer = BatchTransformer()
        transformer.validate_and_initialize(str(digits_job[0] / "model"))
    return transformer


def _answer(handler, image: bytes) -> bytes:
    (reply,), _ = handler.answer([({"content-type": "application/x-image", "accept": "application/jsonlines"}, image)])
    status, content_type, body = reply
    assert status == 200 and content_type == "application/jsonlines", body
    return body


def _upload_test_set(digits_data) -> dict[str, bytes]:
    images = {}
    for folder in sorted((digits_data / "test").iterdir()):
        for path in sorted(folder.glob("*.png"))[:PER_CLASS]:
            relative = f"{folder.name}/{path.name}"
            images[relative] = path.read_bytes()
            seeding.put(f"image-classifier/data/test/{relative}", images[relative])
    return images


def test_explain_step_transforms_with_explanations_on_and_writes_a_gallery(aws, cfg, digits_job, digits_data, handler):
    sm = boto3.client("sagemaker", region_name=REGION)
    seeding.put("seed/digits/model.tar.gz", seeding.tar(digits_job[0] / "model"))
    images = _upload_test_set(digits_data)
    ctx = pipeline.context(cfg, run_id="explain1")
    ctx.state.channels = {"test": f"s3://{BUCKET}/image-classifier/data/test"}
    ctx.state.final_model_data = f"s3://{BUCKET}/seed/digits/model.tar.gz"

    job = ctx.next_name("explain")
    assert job == "ic-explain-explain1-1"
    lines = {}
    for relative, image in images.items():
        lines[relative] = _answer(handler, image)
        seeding.put(f"image-classifier/runs/explain1/explain/{job}/{relative}.out", lines[relative])
    pipeline.run(["explain"], ctx)

    sent = aws.sent("CreateTransformJob")[-1]
    assert sent["TransformJobName"] == job
    assert sent["Environment"] == {params.EXPLAIN_ENV: "saliency"}
    assert sent["TransformInput"]["ContentType"] == "application/x-image" and sent["TransformOutput"]["Accept"] == "application/jsonlines"
    assert sent["TransformOutput"]["S3OutputPath"] == f"s3://{BUCKET}/image-classifier/runs/explain1/explain/{job}/"
    described = sm.describe_transform_job(TransformJobName=job)
    tags = {t["Key"]: t["Value"] for t in sm.list_tags(ResourceArn=described["TransformJobArn"])["Tags"]}
    assert tags == {"project": "image-classifier", "run-id": "explain1", "team": "vision"}
    assert [m["ModelName"] for m in sm.list_models()["Models"]] == []  # the model made for it, deleted at the end

    summary = ctx.state.results["explain"]
    truth = {k: k.split("/")[0] for k in images}
    predicted = {k: json.loads(v)["label"] for k, v in lines.items()}
    mistakes = sorted(k for k in images if predicted[k] != truth[k])
    assert (summary["images"], summary["missing_outputs"], summary["mistakes"]) == (len(images), 0, len(mistakes))
    page = (ctx.run_dir / "reports" / "explain" / "index.html").read_text()
    cards = re.findall(r'<figure class="(\w+)" data-key="([^"]+)"><div><img src="([^"]+)" alt="image"><img src="([^"]+)"', page)
    assert len(cards) == len(images)
    assert [c[1] for c in cards[: len(mistakes)]] == sorted(mistakes, key=lambda k: -json.loads(lines[k])["probability"])
    assert all(c[0] == "mistake" for c in cards[: len(mistakes)]) and all(c[0] == "correct" for c in cards[len(mistakes) :])
    folder = ctx.run_dir / "reports" / "explain"
    for _kind, key, image, overlay in cards:
        assert (folder / image).read_bytes() == images[key]
        line = json.loads(lines[key])
        assert (folder / overlay).read_bytes() == base64.b64decode(line["explanation"]["overlay_png"])
        assert Image.open(folder / overlay).format == "PNG"
        assert f"prediction <b>{line['label']}</b>" in page

    # again: the next attempt's name and its own output prefix
    pipeline.run(["explain"], ctx)
    again = aws.sent("CreateTransformJob")[-1]
    assert again["TransformJobName"] == "ic-explain-explain1-2"
    assert again["TransformOutput"]["S3OutputPath"].endswith("/explain/ic-explain-explain1-2/")
    assert ctx.state.results["explain"]["missing_outputs"] == len(images)  # nothing seeded for it: counted, not invented
    assert page != (folder / "index.html").read_text()


def test_explain_step_in_a_dry_run(tmp_path):
    cfg = load_config(
        overrides={"region": REGION, "role_arn": ROLE, "bucket": BUCKET, "runs_dir": str(tmp_path / "runs"), "explain_method": "gradcam"},
        environ={},
    )
    ctx = pipeline.context(cfg, dry_run=True)
    pipeline.run(["explain"], ctx)
    calls = {c["operation"]: c["request"] for c in ctx.aws.dry_run.calls}
    assert calls["CreateTransformJob"]["Environment"] == {params.EXPLAIN_ENV: "gradcam"}
    assert calls["CreateTransformJob"]["TransformJobName"] == "ic-explain-dry-run-1"
    assert "CreateModel" in calls
