"""Does live traffic still look like the test set? Captured requests and answers against the training run's own figures.

SageMaker's data capture writes JSON Lines under the endpoint's prefix, one record per captured request:
``captureData.endpointInput`` (the request: ``data`` base64 for images, text for JSON) and
``captureData.endpointOutput`` (our answer). The request is decoded with the container's own codec
(``image_classifier.serving.codec.decode_request``: raw images and ``{"instances": [{"b64": ...}]}`` alike),
the answer read as the server writes it. Four comparisons, each a total variation distance
(half the sum of absolute differences of two distributions: 0 the same, 1 disjoint):

- predicted classes: live top-1 labels against the test set's predicted classes (from the final job's
  per-class report: precision and recall give each class's predicted count);
- confidence: live top-1 probabilities against the test set's, in the reliability diagram's 15 bins
  (after temperature scaling, what the server answers);
- image format: the live mix against a sample of the test images in S3;
- image size: reported (median and the share outside the test set's range), not judged.

Drift is flagged when the class, confidence or format distance passes ``drift.threshold`` (default
0.25); a sample of fewer than ``MIN_RECORDS`` predictions is reported and never flagged.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import statistics
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from image_classifier.serving.codec import RequestError, decode_request

MIN_RECORDS = 30
BINS = 15  # the reliability diagram's (training/calibration.py)


@dataclass
class Traffic:
    """What a set of images (live or test) looks like."""

    labels: Counter[str] = field(default_factory=Counter)
    confidence: list[int] = field(default_factory=lambda: [0] * BINS)
    formats: Counter[str] = field(default_factory=Counter)
    sizes: list[tuple[int, int]] = field(default_factory=list)
    unreadable: int = 0

    @property
    def predictions(self) -> int:
        return sum(self.labels.values())


def tvd(a: dict[str, float] | Counter[str], b: dict[str, float] | Counter[str]) -> float:
    """Total variation distance of two count tables (normalised here); 0 when either is empty."""
    total_a, total_b = sum(a.values()), sum(b.values())
    if not total_a or not total_b:
        return 0.0
    return 0.5 * sum(abs(a.get(k, 0) / total_a - b.get(k, 0) / total_b) for k in set(a) | set(b))


def confidence_bin(probability: float) -> int:
    return min(BINS - 1, max(0, int(probability * BINS - 1e-9)))


def image_facts(raw: bytes) -> tuple[str, tuple[int, int]] | None:
    """Format and size from the header alone (nothing decoded)."""
    try:
        with Image.open(io.BytesIO(raw)) as image:
            return str(image.format or "unknown"), image.size
    except Exception:  # noqa: BLE001 - Pillow raises many types for bad bytes
        return None


def _payload(part: dict[str, Any]) -> bytes:
    data = part.get("data", "")
    return base64.b64decode(data) if part.get("encoding", "").upper() == "BASE64" else data.encode()


def _raw_images(body: bytes, content_type: str) -> list[bytes]:
    """The images of a request as sent (for their format); the codec checks and decodes them."""
    if content_type.split(";")[0].strip() != "application/json":
        return [body]
    instances = json.loads(body).get("instances", [])
    return [base64.b64decode(i["b64"] if isinstance(i, dict) else i) for i in instances]


def add_record(traffic: Traffic, record: dict[str, Any]) -> None:
    """One captured request and answer."""
    capture = record.get("captureData", {})
    request, answer = capture.get("endpointInput", {}), capture.get("endpointOutput", {})
    body, content_type = _payload(request), request.get("observedContentType", "")
    try:
        sizes = decode_request(body, content_type, prepare=lambda image: image.size)
        raws = _raw_images(body, content_type)
    except (RequestError, ValueError, KeyError, TypeError):
        traffic.unreadable += 1
        return
    for raw, size in zip(raws, sizes, strict=False):
        facts = image_facts(raw)
        traffic.formats[facts[0] if facts else "unknown"] += 1
        traffic.sizes.append(size)
    try:
        predictions = json.loads(_payload(answer)).get("predictions", [])
    except (ValueError, AttributeError):
        return
    for prediction in predictions:
        traffic.labels[prediction["label"]] += 1
        traffic.confidence[confidence_bin(float(prediction["probability"]))] += 1


def read_lines(lines: Iterable[str], traffic: Traffic, limit: int) -> Traffic:
    for line in lines:
        if traffic.predictions + traffic.unreadable >= limit:
            break
        if line.strip():
            add_record(traffic, json.loads(line))
    return traffic


def reference(report_dir: Path) -> Traffic:
    """The test set as the final job saw it: predicted counts per class and the confidence bins (after temperature)."""
    traffic = Traffic()
    per_class = report_dir / "per_class_metrics.csv"
    metrics = report_dir / "metrics.json"
    if not per_class.is_file() or not metrics.is_file():
        raise FileNotFoundError(f"{report_dir} lacks per_class_metrics.csv or metrics.json (the final job's reports)")
    with per_class.open() as handle:
        for row in csv.DictReader(handle):
            precision, recall, support = float(row["precision"]), float(row["recall"]), int(row["support"])
            traffic.labels[row["class"]] = round(recall * support / precision) if precision else 0
    diagrams = (json.loads(metrics.read_text()).get("calibration") or {}).get("diagrams", {})
    bins = (diagrams.get("test") or diagrams.get("validation") or {}).get("after") or []
    if len(bins) == BINS:
        traffic.confidence = [int(b["count"]) for b in bins]
    return traffic


@dataclass
class Verdict:
    distances: dict[str, float]
    live: Traffic
    test: Traffic
    threshold: float

    @property
    def enough(self) -> bool:
        return self.live.predictions >= MIN_RECORDS

    @property
    def drifted(self) -> list[str]:
        return [name for name, value in self.distances.items() if value > self.threshold] if self.enough else []

    def line(self, endpoint: str) -> str:
        figures = " ".join(f"{k}_tvd={v:.3f}" for k, v in self.distances.items())
        sizes = size_summary(self.live, self.test)
        return (
            f"event=drift endpoint={endpoint} predictions={self.live.predictions} unreadable={self.live.unreadable} {figures} "
            f"live_median_size={sizes['live_median']} outside_test_sizes={sizes['outside']:.3f} threshold={self.threshold} "
            f"drifted={','.join(self.drifted) or 'none'}" + ("" if self.enough else f" note=fewer_than_{MIN_RECORDS}_predictions")
        )


def size_summary(live: Traffic, test: Traffic) -> dict[str, Any]:
    def median(sizes: list[tuple[int, int]]) -> str:
        if not sizes:
            return "none"
        return f"{int(statistics.median(w for w, _ in sizes))}x{int(statistics.median(h for _, h in sizes))}"

    outside = 0.0
    if live.sizes and test.sizes:
        low = (min(w for w, _ in test.sizes), min(h for _, h in test.sizes))
        high = (max(w for w, _ in test.sizes), max(h for _, h in test.sizes))
        outside = sum(not (low[0] <= w <= high[0] and low[1] <= h <= high[1]) for w, h in live.sizes) / len(live.sizes)
    return {"live_median": median(live.sizes), "test_median": median(test.sizes), "outside": outside}


def compare(live: Traffic, test: Traffic, threshold: float) -> Verdict:
    bins = lambda counts: Counter({str(i): c for i, c in enumerate(counts)})  # noqa: E731
    distances = {
        "class": tvd(live.labels, test.labels),
        "confidence": tvd(bins(live.confidence), bins(test.confidence)),
        "format": tvd(live.formats, test.formats),
    }
    return Verdict(distances, live, test, threshold)


def _table(title: str, live: Mapping[str, float], test: Mapping[str, float]) -> str:
    total_live, total_test = sum(live.values()) or 1, sum(test.values()) or 1
    rows = "".join(
        f"<tr><td>{html.escape(str(k))}</td><td>{live.get(k, 0) / total_live:.3f}</td><td>{test.get(k, 0) / total_test:.3f}</td></tr>"
        for k in sorted(set(live) | set(test), key=str)
    )
    return f"<h2>{html.escape(title)}</h2><table><tr><th></th><th>live</th><th>test set</th></tr>{rows}</table>"


def report_html(endpoint: str, verdict: Verdict) -> str:
    """One page: the verdict, each distance, and the distributions side by side."""
    edges = [f"{i / BINS:.2f}-{(i + 1) / BINS:.2f}" for i in range(BINS)]
    confidence = (
        dict(zip(edges, verdict.live.confidence, strict=True)),
        dict(zip(edges, verdict.test.confidence, strict=True)),
    )
    sizes = size_summary(verdict.live, verdict.test)
    status = f"drift: {', '.join(verdict.drifted)}" if verdict.drifted else "no drift above the threshold"
    distances = "".join(f"<li>{html.escape(k)}: {v:.3f}</li>" for k, v in verdict.distances.items())
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>drift of {html.escape(endpoint)}</title>
<style>body{{font-family:sans-serif}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:2px 8px}}</style></head><body>
<h1>{html.escape(endpoint)}: {html.escape(status)}</h1>
<p>{verdict.live.predictions} captured predictions ({verdict.live.unreadable} unreadable records); threshold {verdict.threshold}
(total variation distance; python -m deploy.pipeline drift --endpoint {html.escape(endpoint)})</p><ul>{distances}</ul>
<p>image size: live median {sizes["live_median"]}, test median {sizes["test_median"]}, {sizes["outside"]:.1%} of live images outside
the test set's range</p>
{_table("predicted class", dict(verdict.live.labels), dict(verdict.test.labels))}
{_table("confidence (top-1 probability)", *confidence)}
{_table("image format", dict(verdict.live.formats), dict(verdict.test.formats))}
</body></html>
"""
