"""Fine-tuning quality of the defaults against a grid, per data set and model: what ``train`` gives a user who tunes nothing.

    python -m local.bench.quality_bench                  # the whole benchmark -> results/quality.{json,md} (~60 min on 2 cores)
    python -m local.bench.quality_bench --sets shapes --models tf_efficientnet_lite0 --seeds 1   # a slice
    python -m local.bench.quality_bench --reuse-grid     # the defaults again (a new rule), beside the grid of results/quality.json

For every data set of ``quality_data`` and every model with offline ImageNet weights
(EfficientNet-Lite0/1/2, converted by ``local.convert_weights`` and given as the ``pretrained``
channel, as a user would), it fine-tunes with the defaults (no ``lr``, ``backbone_lr_mult``,
``warmup_epochs``, ``label_smoothing``, ``augment`` or ``epochs`` given: the rule of
``image_classifier.defaults`` decides) and at every point of a grid of learning rate x backbone
multiplier (everything else as the defaults), with several seeds each, and reports the test
accuracy (mean ± sd), the best grid point and the defaults' distance to it, and the wall time.

Runs go through the trainer's own ``main`` (the real data pipeline, model, schedule, checkpoints and
outputs), in-process in ``--workers`` processes of one thread each (two single-thread trainings
outrun one two-thread training on two cores by ~1.5x for these small images, and a process start
per run would cost more than many runs). Speed settings that do not change what is learnt: amp=off
(fp32; bf16 is slower for these models on this CPU), one loader thread (``num_workers=0``).
Reduced resolution and subsets keep the whole benchmark within its documented budget.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import multiprocessing
import os
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from local.bench.report import RESULTS_DIR, machine, require_quiet

DATA_DIR = Path("local/data/quality")
WEIGHTS_DIR = Path("local/data/quality/weights")
GRID_LR = ("0.001", "0.003", "0.01")
GRID_MULT = ("0.1", "0.3", "1.0")
SETS: dict[str, dict[str, str]] = {  # the hyperparameters each data set is given (the resolution a user would choose)
    "fashion_small": {"image_size": "32"},
    "fashion_large": {"image_size": "32"},
    "digits": {"image_size": "32"},
    "shapes": {"image_size": "48"},
    "textures": {"image_size": "32"},
}
MODELS = ("tf_efficientnet_lite0", "tf_efficientnet_lite1", "tf_efficientnet_lite2")
PLAN = {  # (data set, model) pairs run by default: every set with Lite0, the small photo set with Lite1 and Lite2
    ("fashion_small", "tf_efficientnet_lite0"),
    ("fashion_large", "tf_efficientnet_lite0"),
    ("digits", "tf_efficientnet_lite0"),
    ("shapes", "tf_efficientnet_lite0"),
    ("textures", "tf_efficientnet_lite0"),
    ("fashion_small", "tf_efficientnet_lite1"),
    ("fashion_small", "tf_efficientnet_lite2"),
}
FIXED = {"amp": "off", "num_workers": "0", "log_interval": "100000", "batch_size": "32"}


@dataclass(frozen=True)
class Job:
    data_set: str
    model: str
    point: str  # "defaults" or "lr=..,mult=.."
    seed: int
    hyperparameters: dict[str, str]


def jobs(pairs: list[tuple[str, str]], seeds: int, grid: bool, extra: dict[str, str]) -> list[Job]:
    out = []
    for data_set, model in pairs:
        base = {**FIXED, **SETS[data_set], "model": model, **extra}
        points = {"defaults": {}}
        if grid:
            points |= {f"lr={lr},mult={mult}": {"lr": lr, "backbone_lr_mult": mult} for lr, mult in itertools.product(GRID_LR, GRID_MULT)}
        for (point, values), seed in itertools.product(points.items(), range(seeds)):
            out.append(Job(data_set, model, point, seed, {**base, **values, "seed": str(seed)}))
    return out


def _init_worker() -> None:
    import torch

    torch.set_num_threads(1)
    logging.basicConfig(level=logging.WARNING)
    os.environ["IMAGE_CLASSIFIER_PRETRAINED_DIR"] = "/nonexistent"  # only the channel, as a user gives it


def run(job: Job) -> dict[str, Any]:
    """One fine-tune through the trainer's ``main``; its test accuracy, resolved settings and seconds."""
    from image_classifier.environment import TrainingEnvironment
    from image_classifier.hyperparameters import Hyperparameters
    from image_classifier.training import train
    from local.sample_data import write_job

    started, cpu_started = time.perf_counter(), time.process_time()
    with tempfile.TemporaryDirectory(prefix="quality-") as tmp:
        base = Path(tmp)
        write_job(base, DATA_DIR.resolve() / job.data_set, job.hyperparameters)
        pretrained = base / "input" / "data" / "pretrained"
        pretrained.mkdir()
        (pretrained / f"{job.model}.safetensors").symlink_to((WEIGHTS_DIR / f"{job.model}.safetensors").resolve())
        env = TrainingEnvironment.from_env({"SAGEMAKER_BASE_DIR": str(base), "SM_NUM_CPUS": "1", "SM_NUM_GPUS": "0"})
        try:
            metrics = train.main(env, Hyperparameters.from_strings(job.hyperparameters))
            card = json.loads((base / "model" / "model_card.json").read_text()) if (base / "model" / "model_card.json").exists() else {}
        except Exception as exc:  # noqa: BLE001 - a failed run is reported, the others go on
            return {**asdict(job), "error": f"{type(exc).__name__}: {exc}"[:300], "seconds": time.perf_counter() - started}
    resolved = card.get("hyperparameters", {})
    return {
        **asdict(job),
        "test_acc": metrics.get("test_acc"),
        "best_valid_acc": metrics.get("best_valid_acc"),
        "epochs_completed": metrics.get("epochs_completed"),
        "resolved": {k: resolved.get(k) for k in ("lr", "backbone_lr_mult", "warmup_epochs", "label_smoothing", "augment", "epochs")},
        "seconds": time.perf_counter() - started,
        "cpu_seconds": time.process_time() - cpu_started,  # one thread: on a quiet machine, the run's wall time
    }


def summarise(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Per (data set, model): every point's mean ± sd, the best grid point, the defaults' distance to it."""
    table: dict[str, Any] = {}
    for (data_set, model), rows in itertools.groupby(
        sorted(results, key=lambda r: (r["data_set"], r["model"])), key=lambda r: (r["data_set"], r["model"])
    ):
        rows = list(rows)
        points: dict[str, dict[str, Any]] = {}
        for point, group in itertools.groupby(sorted(rows, key=lambda r: r["point"]), key=lambda r: r["point"]):
            accs = [r["test_acc"] for r in group if r.get("test_acc") is not None]
            points[point] = {
                "mean": statistics.mean(accs) if accs else None,
                "sd": statistics.stdev(accs) if len(accs) > 1 else 0.0,
                "n": len(accs),
            }
        grid = {p: v for p, v in points.items() if p != "defaults" and v["mean"] is not None}
        best = max(grid, key=lambda p: grid[p]["mean"]) if grid else None
        defaults = points.get("defaults", {})
        entry = {
            "points": points,
            "best": best,
            "defaults_resolved": next((r["resolved"] for r in rows if r["point"] == "defaults" and "resolved" in r), None),
            "seconds_per_run": statistics.mean(r["seconds"] for r in rows),
            "seconds": sum(r["seconds"] for r in rows),
            "errors": [r["error"] for r in rows if "error" in r][:3],
        }
        if best and defaults.get("mean") is not None:
            entry["defaults_minus_best"] = defaults["mean"] - grid[best]["mean"]
            entry["within_target"] = defaults["mean"] >= grid[best]["mean"] - max(0.02, grid[best]["sd"], defaults["sd"])
        table[f"{data_set} / {model}"] = entry
    return table


def markdown(document: dict[str, Any]) -> str:
    m = document["machine"]
    lines = [
        "### quality",
        "",
        f"{m['cpu']}, {m['cores']} cores, torch {m['torch']}, {m['date']}; {document['workers']} runs at a time, one thread each; "
        f"{document['seeds']} seeds per point; wall time {document['wall_seconds'] / 60:.1f} min"
        + (f" (the defaults only; the grid's runs from {document['grid_reused_from']})" if document.get("grid_reused_from") else "")
        + f"; CPU time of every run / {document['workers']}: {sum(r.get('cpu_seconds', 0) for r in document['runs']) / 60 / document['workers']:.0f} min"
        + f" ({sum('cpu_seconds' in r for r in document['runs'])} of {len(document['runs'])} runs timed)",
        "",
        "| data set / model | defaults (resolved) | defaults | best grid point | best | defaults − best | within target | s/run |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, e in document["table"].items():
        d = e["points"].get("defaults", {})
        b = e["points"].get(e["best"], {}) if e["best"] else {}
        resolved = e.get("defaults_resolved") or {}
        lines.append(
            f"| {name} | {', '.join(f'{k}={v}' for k, v in resolved.items())} | {_pct(d)} | {e['best'] or '–'} | {_pct(b)} | "
            f"{e.get('defaults_minus_best', float('nan')) * 100:+.1f} | {'yes' if e.get('within_target') else 'no'} | {e['seconds_per_run']:.0f} |"
        )
    lines += ["", "Every point (test accuracy, mean ± sd over seeds):", ""]
    for name, e in document["table"].items():
        cells = ", ".join(f"{p}: {_pct(v)}" for p, v in e["points"].items())
        lines.append(f"- {name}: {cells}")
    return "\n".join(lines) + "\n"


def _pct(point: dict[str, Any]) -> str:
    return f"{point['mean'] * 100:.1f} ± {point['sd'] * 100:.1f}" if point.get("mean") is not None else "–"


def prepare() -> None:
    from local.bench.quality_data import write_all
    from local.convert_weights import MODELS as CONVERTIBLE
    from local.convert_weights import convert

    write_all(DATA_DIR)
    for model in CONVERTIBLE:
        if not (WEIGHTS_DIR / f"{model}.safetensors").exists():
            convert(WEIGHTS_DIR / f"{model}.safetensors", model)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sets", help="comma-separated data sets (default: the plan's)")
    parser.add_argument("--models", help="comma-separated models (default: the plan's)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--no-grid", action="store_true", help="the defaults alone")
    parser.add_argument(
        "--reuse-grid", action="store_true", help="run the defaults alone and report them beside the grid runs of results/<name>.json"
    )
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a hyperparameter for every run (e.g. epochs=4)")
    parser.add_argument("--name", default="quality")
    parser.add_argument("--allow-busy", action="store_true", help="run on a busy machine; wall times are then marked not comparable")
    args = parser.parse_args()
    require_quiet(args.allow_busy)
    prepare()
    pairs = sorted(PLAN)
    if args.sets or args.models:
        sets = args.sets.split(",") if args.sets else sorted(SETS)
        models = args.models.split(",") if args.models else [MODELS[0]]
        pairs = [(s, m) for s in sets for m in models]
    extra = dict(item.split("=", 1) for item in args.set)
    kept: list[dict[str, Any]] = []
    previous: dict[str, Any] = {}
    if args.reuse_grid:
        previous = json.loads((RESULTS_DIR / f"{args.name}.json").read_text())
        kept = [r for r in previous["runs"] if r["point"] != "defaults"]
    todo = jobs(pairs, args.seeds, not (args.no_grid or args.reuse_grid), extra)
    todo.sort(key=lambda j: (j.data_set != "fashion_large", j.model != MODELS[0]))  # the longest runs first: the pool ends together
    print(f"event=quality_start runs={len(todo)} workers={args.workers}", flush=True)
    started = time.perf_counter()
    results = list(kept)
    with multiprocessing.get_context("spawn").Pool(args.workers, initializer=_init_worker, maxtasksperchild=20) as pool:
        for i, result in enumerate(pool.imap_unordered(run, todo), 1):
            results.append(result)
            print(
                f"event=quality_run done={i} of={len(todo)} set={result['data_set']} model={result['model']} point={result['point']} "
                f"seed={result['seed']} test_acc={result.get('test_acc')} seconds={result['seconds']:.1f}"
                + (f" error={result['error'][:120].replace(' ', '_')}" if "error" in result else ""),
                flush=True,
            )
    document = {
        "benchmark": args.name,
        "machine": machine(),
        "workers": args.workers,
        "seeds": args.seeds,
        "grid": {"lr": GRID_LR, "backbone_lr_mult": GRID_MULT},
        "wall_seconds": time.perf_counter() - started,
        "grid_reused_from": previous["machine"]["date"] if args.reuse_grid else None,
        "table": summarise(results),
        "runs": results,
    }
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    (RESULTS_DIR / f"{args.name}.json").write_text(json.dumps(document, indent=2) + "\n")
    (RESULTS_DIR / f"{args.name}.md").write_text(markdown(document))
    print(markdown(document))


if __name__ == "__main__":
    main()
