"""Which graph serving should run, and what each costs at start: the model alone, per device.

    python -m local.bench.graphs_bench                              # CPU, ResNet-50 -> results/graphs.{json,md}
    python -m local.bench.graphs_bench --device cuda --models resnet50,resnet18,tf_efficientnet_lite0 --name graphs_cuda

``torch.jit.trace``/``freeze``, which serving's fast path uses, are deprecated in torch 2.14. The
candidates that need no C/C++ compiler (the image carries none): eager; frozen TorchScript;
``torch.export`` saved once (at training time) and loaded at start (``torch.export.load(...).module()``).
Inductor (``torch.compile``) is measured where a compiler is present, to say what carrying one would
buy. For each model, device and precision (fp32, bf16): batch 1 latency (p50) and batch 16
throughput, medians of interleaved runs; beside them, what each costs at start (``start_s``: trace +
freeze, load of the saved program, or compile, both shapes run once) and, for export, the one-off
export + save (``export_s``, paid at training time, not at start).

The serving rule (``serving/fast_path_rule.py``) is checked in the same run: for each model, the
variant the rule picks on this machine beside the measured best of the compiler-free variants
(``rule / best`` ratios: 1.0 when the rule picked the best).
"""

from __future__ import annotations

import argparse
import copy
import functools
import os
import shutil
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

from image_classifier.modeling.factory import build_architecture
from image_classifier.serving.fast_path_rule import decide, read_facts
from image_classifier.serving.fast_paths import gflop_per_image
from local.bench.report import interleaved, medians, require_quiet, write_result

BATCH = 16
KINDS = ("eager", "frozen", "export", "inductor")


def _model(name: str, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_architecture(name, 10).eval().to(device=device, memory_format=torch.channels_last)
    return model if dtype == torch.float32 else copy.deepcopy(model).to(dtype)


def _inputs(device: torch.device, dtype: torch.dtype, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    single = torch.randn(1, 3, size, size, generator=g).contiguous(memory_format=torch.channels_last)
    batch = torch.randn(BATCH, 3, size, size, generator=g).contiguous(memory_format=torch.channels_last)
    return single.to(device=device, dtype=dtype), batch.to(device=device, dtype=dtype)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def export_program(module: torch.nn.Module, example: torch.Tensor, path: Path) -> None:
    """The one-off part: export with a dynamic batch and save (what training would do once)."""
    batch = torch.export.Dim("batch", min=1, max=1024)
    two = example.expand(2, *example.shape[1:]).contiguous(memory_format=torch.channels_last)  # 1 would specialise
    program = torch.export.export(module, (two,), dynamic_shapes=({0: batch},))
    torch.export.save(program, str(path))


def build(kind: str, name: str, precision: str, device: torch.device, size: int, workdir: Path) -> tuple[Callable, float, float]:
    """(forward, seconds at start, seconds of the one-off export)."""
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    single, batch = _inputs(device, dtype, size)
    module = _model(name, device, dtype)
    export_s = float("nan")
    forward: Callable[[torch.Tensor], torch.Tensor] = module
    with torch.inference_mode():
        if kind == "export":
            path = workdir / f"{name}-{precision}-{device.type}.pt2"
            started = time.perf_counter()
            with torch.no_grad():
                export_program(module, single, path)
            export_s = time.perf_counter() - started
        _sync(device)
        started = time.perf_counter()
        if kind == "frozen":
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                traced = torch.jit.trace(module, single, check_trace=False)
                forward = torch.jit.optimize_for_inference(torch.jit.freeze(traced))
        elif kind == "export":
            forward = torch.export.load(str(path)).module()
        elif kind == "inductor":
            forward = torch.compile(module, dynamic=False)
        for example in (single, batch):  # the first call of each shape is part of the start
            forward(example)
        _sync(device)
    return forward, time.perf_counter() - started, export_s


@torch.inference_mode()
def measure(forward: Callable[[torch.Tensor], torch.Tensor], precision: str, device: torch.device, size: int) -> dict[str, float]:
    single, batch = _inputs(device, torch.bfloat16 if precision == "bf16" else torch.float32, size)
    singles = []
    for _ in range(20 if device.type == "cpu" else 50):
        _sync(device)
        started = time.perf_counter()
        forward(single)
        _sync(device)
        singles.append(time.perf_counter() - started)
    repeats = 4 if device.type == "cpu" else 40
    _sync(device)
    started = time.perf_counter()
    for _ in range(repeats):
        forward(batch)
    _sync(device)
    return {"b1_p50_ms": 1000 * statistics.median(singles), "b16_images_per_s": repeats * BATCH / (time.perf_counter() - started)}


def rule_against_best(name: str, device: torch.device, size: int, middle: dict[str, dict[str, float]]) -> tuple[str, dict[str, str]]:
    """The variant the serving rule picks for ``name`` here, and the measured best (compiler-free) per metric."""
    model = _model(name, device, torch.float32)
    single, _ = _inputs(device, torch.float32, size)
    decision = decide(read_facts(device.type), gflop_per_image(model, single))
    candidates = {v: m for v, m in middle.items() if v.startswith(f"{name} ") and not v.endswith("inductor")}
    best = {}
    if candidates:
        best["b16_images_per_s"] = max(candidates, key=lambda v: candidates[v]["b16_images_per_s"])
        best["b1_p50_ms"] = min(candidates, key=lambda v: candidates[v]["b1_p50_ms"])
    return f"{name} {decision.precision} {decision.graph}", best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--models", default="resnet50", help="comma-separated architectures (timm names or torchvision/<name>)")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--kinds", default="eager,frozen,export,inductor", help="inductor only where a C++ compiler is present")
    parser.add_argument("--pairs", type=int, default=5)
    parser.add_argument("--name", default="graphs")
    parser.add_argument("--allow-busy", action="store_true", help="run on a busy machine; the result is marked not comparable")
    args = parser.parse_args()
    require_quiet(args.allow_busy)
    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(len(os.sched_getaffinity(0)))
    compiler = shutil.which(os.environ.get("CXX", "g++"))
    kinds = [k for k in args.kinds.split(",") if k in KINDS and (k != "inductor" or compiler)]
    built: dict[str, Callable[[], dict[str, float]]] = {}
    start_s: dict[str, float] = {}
    export_s: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="graphs-") as tmp:
        for name in args.models.split(","):
            for kind in kinds:
                for precision in ("fp32", "bf16"):
                    variant = f"{name} {precision} {kind}"
                    try:
                        forward, start_s[variant], export_s[variant] = build(kind, name, precision, device, args.size, Path(tmp))
                    except Exception as exc:  # noqa: BLE001 - a path that does not build here is reported, not fatal
                        start_s[variant] = float("nan")
                        print(
                            f"event=graph_failed variant={variant.replace(' ', '_')} error={type(exc).__name__}: {str(exc)[:300]}",
                            flush=True,
                        )
                        continue
                    built[variant] = functools.partial(measure, forward, precision, device, args.size)
        runs = interleaved(built, pairs=args.pairs)
    middle = medians(runs)
    ratios = {}
    for variant in middle:
        name, precision, kind = variant.split()
        if kind != "eager" and f"{name} {precision} eager" in middle:
            ratios[f"{name} b16 throughput, {precision} {kind} / {precision} eager"] = (
                variant,
                f"{name} {precision} eager",
                "b16_images_per_s",
            )
        if precision == "bf16" and f"{name} fp32 {kind}" in middle:
            ratios[f"{name} b1 latency, fp32 {kind} / bf16 {kind}"] = (f"{name} fp32 {kind}", variant, "b1_p50_ms")
    rule_notes = {}
    for name in args.models.split(","):
        chosen, best = rule_against_best(name, device, args.size, middle)
        rule_notes[f"rule on {name}"] = f"{chosen}; measured best: {best}"
        for metric, label in (("b16_images_per_s", "b16 throughput"), ("b1_p50_ms", "b1 latency")):
            if chosen in middle and best.get(metric) in middle:
                ratios[f"{name} {label}, rule's choice / measured best"] = (chosen, best[metric], metric)
    for variant, values in runs.items():  # the start costs beside the timings, in every run's row
        for row in values:
            row["start_s"] = start_s[variant]
            if variant.endswith("export"):
                row["export_s"] = export_s[variant]
    document = write_result(
        args.name,
        runs,
        ratios=ratios,
        notes={
            "models": f"{args.models}: random init, 10 classes, channels_last, {args.size} px; {device.type}",
            "start_s": "trace + freeze / load of the saved program / compile, then one call of each shape",
            "export_s": "torch.export with a dynamic batch + save, once (training time), not paid at start",
            "compiler": compiler or "none: Inductor not measured",
            **rule_notes,
        },
    )
    print({k: round(v, 2) for k, v in document["ratios"].items()})


if __name__ == "__main__":
    main()
