"""Explanations over the test set without SageMaker Clarify: a batch transform with explanations on, and a gallery.

Clarify is closed to new accounts; this step is the project's own replacement (the ``clarify`` step
stays for accounts that have it). Batch transform cannot send per-request custom attributes, so the
transform job's environment turns explanations on (``IMAGE_CLASSIFIER_EXPLAIN=<explain_method>``):
every image's ``.out`` holds one JSON line, its prediction and the heatmap of the predicted class
(docs/serving.md#explanations). The outputs are read back into an HTML gallery,
``deploy/runs/<run>/reports/explain/index.html``: image, heatmap, true label, prediction and
probability, mistakes first (the most confident first), then the least confident correct answers.

The job is named per attempt (``ic-explain-<run>-<n>``) and writes under its own prefix, is recorded
before it is requested (teardown stops it), reuses the run's model (``ensure_model``) and is tagged
like every other resource.
"""

from __future__ import annotations

import base64
import html
import json
import shutil
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from deploy import results, sdk
from deploy.context import Context, StepError
from deploy.steps.hosting import ensure_model
from image_classifier.params import EXPLAIN_ENV

GALLERY_DIR = "reports/explain"


@dataclass(frozen=True)
class Record:
    """One test image and what the transform answered for it (``answer`` None: no output)."""

    key: str  # relative to the test prefix: <class>/<file>
    truth: str
    answer: dict[str, Any] | None

    @property
    def correct(self) -> bool:
        return self.answer is not None and self.answer["label"] == self.truth


def step_explain(ctx: Context) -> None:
    model_name = ensure_model(ctx, ctx.cfg.transform_instance_type)
    test = ctx.state.channels.get("test") or (f"{ctx.cfg.s3_root}/data/test" if ctx.dry_run else None)
    if not test:
        raise StepError("the data set has no test split: run 'data' with a test/ folder")
    job = ctx.new_name("explain")
    output = f"{ctx.cfg.s3_root}/runs/{ctx.state.run_id}/explain/{job}/"
    transformer = sdk.transformer(ctx.cfg, ctx.sagemaker, model_name=model_name, output_path=output, run_id=ctx.state.run_id)
    # the job's Environment: the server explains every record (beside the GPU host's settings, if any)
    transformer.env = {**(transformer.env or {}), EXPLAIN_ENV: ctx.cfg.explain_method}
    ctx.record("transform-job", job)
    ctx.state.results["explain"] = {"job": job, "output": output, "method": ctx.cfg.explain_method}
    ctx.save()
    transformer.transform(
        test.rstrip("/") + "/", content_type="application/x-image", split_type=None, job_name=job, wait=not ctx.dry_run, logs=False
    )
    if ctx.dry_run:
        return
    s3 = ctx.aws.client("s3")
    records = read_records(s3, test, output)
    gallery = write_gallery(s3, test, records, ctx.run_dir / GALLERY_DIR, job=job, method=ctx.cfg.explain_method)
    answered = [r for r in records if r.answer is not None]
    mistakes = sum(not r.correct for r in answered)
    ctx.state.results["explain"] |= {"images": len(answered), "mistakes": mistakes, "missing_outputs": len(records) - len(answered)}
    ctx.state.results["explain"]["gallery"] = str(gallery)
    ctx.save()
    ctx.say(
        f"event=explain_gallery job={job} method={ctx.cfg.explain_method} images={len(answered)} mistakes={mistakes} "
        f"missing={len(records) - len(answered)} gallery={gallery}"
    )


def read_records(s3: Any, input_uri: str, output_uri: str) -> list[Record]:
    """Every ``<input>/<class>/<image>`` with the first JSON line of its ``.out`` (None where the job wrote none)."""
    _, in_prefix = results.split_s3(input_uri.rstrip("/") + "/")
    out_bucket, out_prefix = results.split_s3(output_uri.rstrip("/") + "/")
    records = []
    for key in results.list_keys(s3, input_uri.rstrip("/") + "/"):
        relative = key[len(in_prefix) :]
        parts = PurePosixPath(relative).parts
        if len(parts) < 2:
            continue
        try:
            body = s3.get_object(Bucket=out_bucket, Key=out_prefix + relative + ".out")["Body"].read()
        except s3.exceptions.NoSuchKey:
            records.append(Record(relative, parts[-2], None))
            continue
        lines = body.decode().splitlines()
        records.append(Record(relative, parts[-2], json.loads(lines[0]) if lines else None))
    return records


def _order(record: Record) -> tuple:
    """Mistakes first, the most confident first; then correct answers, the least confident first; no output last."""
    if record.answer is None:
        return (2, 0.0, record.key)
    probability = float(record.answer["probability"])
    return (0, -probability, record.key) if not record.correct else (1, probability, record.key)


def write_gallery(s3: Any, input_uri: str, records: list[Record], folder: Path, *, job: str, method: str) -> Path:
    """``folder/index.html`` with ``images/`` and ``overlays/`` beside it (a folder to open or copy as is)."""
    if folder.exists():
        shutil.rmtree(folder)
    (folder / "images").mkdir(parents=True)
    (folder / "overlays").mkdir()
    bucket, prefix = results.split_s3(input_uri.rstrip("/") + "/")
    cards = []
    for n, record in enumerate(sorted(records, key=_order)):
        image = f"images/{n:05d}{PurePosixPath(record.key).suffix.lower()}"
        s3.download_file(bucket, prefix + record.key, str(folder / image))
        cards.append(_card(record, image, _overlay(record, folder, n)))
    answered = [r for r in records if r.answer is not None]
    mistakes = sum(not r.correct for r in answered)
    accuracy = f"{(len(answered) - mistakes) / len(answered):.1%}" if answered else "n/a"
    page = PAGE.format(
        job=html.escape(job),
        method=html.escape(method),
        images=len(answered),
        mistakes=mistakes,
        accuracy=accuracy,
        missing=len(records) - len(answered),
        cards="\n".join(cards),
    )
    index = folder / "index.html"
    index.write_text(page)
    return index


def _overlay(record: Record, folder: Path, n: int) -> str | None:
    explanation = (record.answer or {}).get("explanation") or {}
    encoded = explanation.get("overlay_png")
    if not encoded:
        return None
    name = f"overlays/{n:05d}.png"
    (folder / name).write_bytes(base64.b64decode(encoded))
    return name


def _card(record: Record, image: str, overlay: str | None) -> str:
    answer = record.answer or {}
    explanation = answer.get("explanation") or {}
    kind = "missing" if record.answer is None else "correct" if record.correct else "mistake"
    heat = f'<img src="{overlay}" alt="heatmap">' if overlay else f"<p>{html.escape(explanation.get('overlay_omitted', 'no heatmap'))}</p>"
    if record.answer is None:
        caption = "no output from the transform job"
    else:
        caption = (
            f"prediction <b>{html.escape(str(answer['label']))}</b> ({float(answer['probability']):.1%})<br>"
            f"heatmap of {html.escape(str(explanation.get('label', '?')))} by {html.escape(str(explanation.get('method', '?')))}"
        )
    return (
        f'<figure class="{kind}" data-key="{html.escape(record.key)}"><div><img src="{image}" alt="image">{heat}</div>'
        f"<figcaption>{html.escape(record.key)}<br>true <b>{html.escape(record.truth)}</b><br>{caption}</figcaption></figure>"
    )


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Explanations: {job}</title>
<style>
body {{ font-family: sans-serif; margin: 1.5em; }}
main {{ display: flex; flex-wrap: wrap; gap: 1em; }}
figure {{ margin: 0; padding: .5em; border: 3px solid #9c9; width: 300px; font-size: 13px; }}
figure.mistake {{ border-color: #d55; }}
figure.missing {{ border-color: #999; }}
figure img {{ width: 145px; height: 145px; object-fit: contain; image-rendering: pixelated; background: #000; }}
</style></head><body>
<h1>Explanations over the test set</h1>
<p>Batch transform <code>{job}</code>, method <code>{method}</code>: {images} images, {mistakes} mistakes
(accuracy {accuracy}), {missing} without output. Mistakes first (red, most confident first), then correct answers (green,
least confident first). Left: the image; right: the model's input crop with the heatmap of the predicted class.</p>
<main>
{cards}
</main></body></html>
"""
