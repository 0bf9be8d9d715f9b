"""What a user reads after a job: metrics JSON, curves, confusion matrix, per-class scores,
TensorBoard scalars and the training report (JSON + a self-contained HTML page)."""

from __future__ import annotations

import base64
import csv
import html
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from image_classifier import params


def confusion_matrix(labels: np.ndarray, preds: np.ndarray, num_classes: int) -> np.ndarray:
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (labels, preds), 1)
    return matrix


def per_class_rows(matrix: np.ndarray, classes: list[str]) -> list[dict]:
    rows = []
    for i, name in enumerate(classes):
        tp = int(matrix[i, i])
        predicted = int(matrix[:, i].sum())
        support = int(matrix[i, :].sum())
        precision = tp / predicted if predicted else 0.0
        recall = tp / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        rows.append({"class": name, "precision": precision, "recall": recall, "f1": f1, "support": support})
    return rows


def write_per_class(rows: list[dict], path: Path) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["class", "precision", "recall", "f1", "support"])
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (f"{v:.4f}" if isinstance(v, float) else v) for k, v in row.items()})


def plot_learning_curves(history: list[dict], path: Path) -> None:
    epochs = [h["epoch"] for h in history]
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(10, 4))
    for key, style in (("train", "-o"), ("valid", "-s")):
        loss_ax.plot(epochs, [h[f"{key}_loss"] for h in history], style, label=key)
        acc_ax.plot(epochs, [h[f"{key}_acc"] for h in history], style, label=key)
    loss_ax.set(title="loss", xlabel="epoch")
    acc_ax.set(title="top-1 accuracy", xlabel="epoch", ylim=(0, 1))
    loss_ax.legend()
    acc_ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_reliability(diagrams: dict[str, dict[str, list[dict[str, float]]]], temperature: float, path: Path) -> None:
    """Confidence against accuracy per bin, before and after the temperature, one panel per split."""
    fig, axes = plt.subplots(1, len(diagrams), figsize=(5 * len(diagrams), 4.5), squeeze=False)
    for ax, (split, sides) in zip(axes[0], diagrams.items(), strict=True):
        ax.plot([0, 1], [0, 1], ":", color="grey", label="perfect")
        for side, style in (("before", "-o"), ("after", "-s")):
            rows = [r for r in sides[side] if r["count"]]
            label = "softmax" if side == "before" else f"softmax(logits / {temperature:.3g})"
            ax.plot([r["confidence"] for r in rows], [r["accuracy"] for r in rows], style, label=label)
        ax.set(title=f"{split}: reliability", xlabel="confidence (top-1 probability)", ylabel="accuracy", xlim=(0, 1), ylim=(0, 1))
        ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_confusion(matrix: np.ndarray, classes: list[str], path: Path, title: str) -> None:
    size = max(5.0, min(30.0, 0.25 * len(classes) + 3))
    fig, ax = plt.subplots(figsize=(size, size))
    normalised = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    ax.imshow(normalised, cmap="Blues", vmin=0, vmax=1)
    if len(classes) <= 40:
        ax.set_xticks(range(len(classes)), classes, rotation=90, fontsize=7)
        ax.set_yticks(range(len(classes)), classes, fontsize=7)
        if len(classes) <= 15:
            for (i, j), count in np.ndenumerate(matrix):
                ax.text(j, i, str(count), ha="center", va="center", fontsize=7, color="white" if normalised[i, j] > 0.5 else "black")
    ax.set(title=title, xlabel="predicted", ylabel="true")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _embedded_png(path: Path) -> str:
    if not path.exists():
        return ""
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img alt="{html.escape(path.name)}" src="data:image/png;base64,{data}">'


def write_report(report: dict, output_dir: Path) -> None:
    (output_dir / params.REPORT_JSON_FILE).write_text(json.dumps(report, indent=2, default=str) + "\n")
    findings = report.get("findings") or []
    finding_rows = (
        "".join(f"<tr><td>{html.escape(f['rule'])}</td><td>{f['epoch']}</td><td>{html.escape(f['message'])}</td></tr>" for f in findings)
        or '<tr><td colspan="3">no rule fired</td></tr>'
    )
    metric_rows = "".join(f"<tr><td>{html.escape(str(k))}</td><td>{v}</td></tr>" for k, v in (report.get("final_metrics") or {}).items())
    system_rows = "".join(f"<tr><td>{html.escape(str(k))}</td><td>{v:.3g}</td></tr>" for k, v in (report.get("system") or {}).items())
    timing_rows = "".join(
        f"<tr><td>{h['epoch']}</td><td>{h['epoch_seconds']:.1f}</td><td>{h['images_per_sec']:.1f}</td><td>{h['data_wait_fraction']:.2f}</td></tr>"
        for h in report.get("history", [])
    )
    calibration_rows = "".join(
        f"<tr><td>{html.escape(split)}</td>"
        + "".join(f"<td>{values[k]:.4f}</td>" for k in ("nll_before", "nll_after", "ece_before", "ece_after"))
        + "</tr>"
        for split, values in ((report.get("calibration") or {}).get("splits") or {}).items()
    )
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>Training report</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:auto}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:2px 8px}}img{{max-width:100%}}</style></head><body>
<h1>Training report: {html.escape(str(report.get("job_name")))}</h1>
<p>model <b>{html.escape(str(report.get("model")))}</b>, {report.get("num_classes")} classes, status <b>{html.escape(str(report.get("status")))}</b></p>
<h2>Checks</h2><table><tr><th>rule</th><th>epoch</th><th>evidence</th></tr>{finding_rows}</table>
<h2>Final metrics</h2><table>{metric_rows}</table>
<h2>Learning curves</h2>{_embedded_png(output_dir / params.LEARNING_CURVES_FILE)}
<h2>Confusion matrix</h2>{_embedded_png(output_dir / params.CONFUSION_MATRIX_FILE)}
<h2>Calibration</h2><table><tr><th>split</th><th>NLL before</th><th>NLL after</th><th>ECE before</th><th>ECE after</th></tr>{calibration_rows}</table>
<p>temperature {html.escape(str((report.get("calibration") or {}).get("temperature", "not fitted")))} (fitted on validation; serving divides the logits by it)</p>
{_embedded_png(output_dir / params.RELIABILITY_FILE)}
<h2>Time per epoch</h2><table><tr><th>epoch</th><th>seconds</th><th>images/s</th><th>data wait share</th></tr>{timing_rows}</table>
<h2>System</h2><table>{system_rows}</table>
</body></html>
"""
    (output_dir / params.REPORT_HTML_FILE).write_text(page)
