"""What every benchmark shares: interleaved A/B pairs, medians, the machine, JSON + Markdown out.

A benchmark is a set of named variants (the baseline and ours) measured by the same function.
``interleaved`` runs them A, B, A, B ... so that drift of the machine (thermal, other load)
hits both alike; the result is the median of each and their ratio, never a single run.

    from local.bench.report import interleaved, write_result
    runs = interleaved({"baseline": run_baseline, "ours": run_ours}, pairs=5)
    write_result("training", runs, ratios={"speed-up": ("ours", "baseline", "images_per_s")})
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).resolve().parent / "results"
# CPU features that decide which precision can be fast (bf16 matmul units): recorded with every result
INTERESTING_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile", "amx_int8")
_STARTED: dict[str, Any] = {}


def cpu_flags() -> list[str]:
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.is_file():
        return []
    line = next((line for line in cpuinfo.read_text().splitlines() if line.startswith("flags")), "")
    present = set(line.split(":", 1)[-1].split())
    return [flag for flag in INTERESTING_FLAGS if flag in present]


def load_average() -> float | None:
    return round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None


def require_quiet(allow_busy: bool = False) -> bool:
    """A benchmark on a busy machine measures the neighbours. Above half the cores of load at start
    it refuses, or with ``allow_busy`` runs and marks its result as not comparable. Returns comparable."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    load = load_average()
    _STARTED.update(load_average_at_start=load, cores=cores)
    if load is None or load <= cores / 2:
        _STARTED["comparable"] = True
        return True
    message = f"load average {load} at start on {cores} cores (above {cores / 2}): the machine is busy"
    if not allow_busy:
        raise SystemExit(f"{message}; wait for it to settle, or pass --allow-busy to mark the result as not comparable")
    print(f"event=bench_busy {message.replace(' ', '_')} comparable=false", flush=True)
    _STARTED["comparable"] = False
    return False


def machine() -> dict[str, Any]:
    """Where the numbers come from: CPU model, cores torch may use, GPU if any, versions."""
    import torch

    cpu = platform.processor() or ""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines() if line.startswith("model name")), cpu)
    return {
        "cpu": cpu,
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu_flags": cpu_flags(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "load_average_at_start": _STARTED.get("load_average_at_start"),
        "load_average_at_end": load_average(),
        "comparable": _STARTED.get("comparable", False),
    }


def interleaved(
    variants: Mapping[str, Callable[[], dict[str, float]]], pairs: int = 5, warmup: int = 1
) -> dict[str, list[dict[str, float]]]:
    """Each variant returns a dict of metrics per run; runs alternate between variants."""
    if pairs < 5:
        raise ValueError("at least five interleaved pairs: a median of fewer is noise")
    for _ in range(warmup):
        for run in variants.values():
            run()
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in variants}
    for _ in range(pairs):
        for name, run in variants.items():
            runs[name].append(run())
    return runs


def medians(runs: Mapping[str, list[dict[str, float]]]) -> dict[str, dict[str, float]]:
    """Per variant, the median of each metric it reports (variants may report different ones)."""
    return {name: {key: statistics.median(r[key] for r in results) for key in results[0]} for name, results in runs.items()}


def write_result(
    name: str,
    runs: Mapping[str, list[dict[str, float]]],
    *,
    ratios: Mapping[str, tuple[str, str, str]] | None = None,
    notes: Mapping[str, Any] | None = None,
    out_dir: Path = RESULTS_DIR,
) -> dict[str, Any]:
    """``ratios``: label -> (numerator variant, denominator variant, metric), computed on medians.

    Writes ``results/<name>.json`` (every run, the medians, the ratios, the machine) and
    ``results/<name>.md`` (the table the README shows); returns the JSON document.
    """
    middle = medians(runs)
    computed = {label: middle[a][metric] / middle[b][metric] for label, (a, b, metric) in (ratios or {}).items()}
    document = {"benchmark": name, "machine": machine(), "medians": middle, "ratios": computed, "runs": runs, "notes": dict(notes or {})}
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{name}.json").write_text(json.dumps(document, indent=2) + "\n")
    (out_dir / f"{name}.md").write_text(markdown(document))
    return document


def markdown(document: Mapping[str, Any]) -> str:
    middle = document["medians"]
    metrics = list(dict.fromkeys(key for values in middle.values() for key in values))  # every variant's, in order
    lines = [f"### {document['benchmark']}", ""]
    m = document["machine"]
    lines.append(
        f"{m['cpu']} ({' '.join(m.get('cpu_flags') or []) or 'no bf16/AMX flags'}), {m['cores']} cores, GPU: {m['gpu'] or 'none'}, "
        f"torch {m['torch']}, {m['date']}; load average {m.get('load_average_at_start')} at start, {m.get('load_average_at_end')} at end; "
        f"medians of {len(next(iter(document['runs'].values())))} interleaved runs each"
    )
    if not m.get("comparable", False):
        lines += ["", "**Not comparable: the machine was busy at the start (or its load was not checked).**"]
    lines += ["", "| variant | " + " | ".join(metrics) + " |", "|---|" + "---|" * len(metrics)]
    for variant, values in middle.items():
        lines.append(f"| {variant} | " + " | ".join(_fmt(values[k]) if k in values else "–" for k in metrics) + " |")
    if document["ratios"]:
        lines += ["", "| ratio | value |", "|---|---|"]
        lines += [f"| {label} | **{value:.2f}×** |" for label, value in document["ratios"].items()]
    for key, value in document.get("notes", {}).items():
        lines.append(f"\n- {key}: {value}")
    return "\n".join(lines) + "\n"


def _fmt(value: float) -> str:
    return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"
