"""What serving loses without TorchScript, and what a compiled graph would gain: the model alone.

    python -m local.bench.graphs_bench            # -> results/graphs.{json,md} (~5 min on 2 cores)

``torch.jit.trace``/``freeze``, which serving's fast path uses, are deprecated in torch 2.14; the
successors (``torch.compile``'s Inductor, ``torch.export`` + AOTInductor) generate C++ and need a
compiler, which the image does not carry (~200 MB with the headers). This measures, for the
benchmark's ResNet-50 on this machine: eager and frozen TorchScript in fp32 and bf16 (what serving
chooses between today), and Inductor in both precisions where a C++ compiler is present (what a
compiler in the image would buy). Batch 1 latency (p50) and batch 16 throughput, every core,
medians of interleaved pairs; compile times are reported beside, not inside, the timings.
"""

from __future__ import annotations

import argparse
import copy
import functools
import os
import shutil
import statistics
import time
import warnings
from collections.abc import Callable

import torch

from local.bench.report import interleaved, medians, require_quiet, write_result

BATCH = 16


def _model() -> torch.nn.Module:
    import torchvision

    torch.manual_seed(0)
    return torchvision.models.resnet50().eval().to(memory_format=torch.channels_last)


def _inputs(dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    single = torch.randn(1, 3, 224, 224, generator=g).contiguous(memory_format=torch.channels_last).to(dtype)
    batch = torch.randn(BATCH, 3, 224, 224, generator=g).contiguous(memory_format=torch.channels_last).to(dtype)
    return single, batch


def build(kind: str, precision: str) -> tuple[Callable[[torch.Tensor], torch.Tensor], float]:
    """The forward callable and the seconds its preparation took."""
    started = time.perf_counter()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    module = _model() if dtype == torch.float32 else copy.deepcopy(_model()).to(dtype)
    single, batch = _inputs(dtype)
    forward: Callable[[torch.Tensor], torch.Tensor] = module
    with torch.inference_mode():
        if kind == "frozen":
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                traced = torch.jit.trace(module, single, check_trace=False)
                forward = torch.jit.optimize_for_inference(torch.jit.freeze(traced))
        elif kind == "inductor":
            forward = torch.compile(module, dynamic=False)
        for example in (single, batch, single, batch):  # compile/specialise for both shapes before timing
            forward(example)
    return forward, time.perf_counter() - started


@torch.inference_mode()
def measure(forward: Callable[[torch.Tensor], torch.Tensor], precision: str) -> dict[str, float]:
    single, batch = _inputs(torch.bfloat16 if precision == "bf16" else torch.float32)
    singles = []
    for _ in range(20):
        started = time.perf_counter()
        forward(single)
        singles.append(time.perf_counter() - started)
    started = time.perf_counter()
    for _ in range(4):
        forward(batch)
    return {"b1_p50_ms": 1000 * statistics.median(singles), "b16_images_per_s": 4 * BATCH / (time.perf_counter() - started)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=5)
    parser.add_argument("--allow-busy", action="store_true", help="run on a busy machine; the result is marked not comparable")
    args = parser.parse_args()
    require_quiet(args.allow_busy)
    torch.set_num_threads(len(os.sched_getaffinity(0)))
    kinds = ["eager", "frozen"] + (["inductor"] if shutil.which(os.environ.get("CXX", "g++")) else [])
    built, compile_seconds = {}, {}
    for kind in kinds:
        for precision in ("fp32", "bf16"):
            try:
                built[f"{precision} {kind}"], compile_seconds[f"{precision} {kind}"] = build(kind, precision)
            except Exception as exc:  # noqa: BLE001 - a path that does not build here is reported, not fatal
                compile_seconds[f"{precision} {kind}"] = float("nan")
                print(f"event=graph_failed variant={precision}_{kind} error={type(exc).__name__}: {str(exc)[:200]}", flush=True)
    variants = {name: functools.partial(measure, forward, name.split()[0]) for name, forward in built.items()}
    runs = interleaved(variants, pairs=args.pairs)
    middle = medians(runs)
    ratios = {}
    for precision in ("fp32", "bf16"):
        for kind in ("frozen", "inductor"):
            if f"{precision} {kind}" in middle:
                ratios[f"b16 throughput, {precision} {kind} / {precision} eager"] = (
                    f"{precision} {kind}",
                    f"{precision} eager",
                    "b16_images_per_s",
                )
    document = write_result(
        "graphs",
        runs,
        ratios=ratios,
        notes={
            "model": "torchvision ResNet-50, random init, channels_last, 224 px; every core",
            "preparation seconds (trace+freeze / Inductor compile, both shapes)": {k: round(v, 1) for k, v in compile_seconds.items()},
            "compiler": shutil.which(os.environ.get("CXX", "g++")) or "none: Inductor not measured",
        },
    )
    print({k: round(v, 2) for k, v in document["ratios"].items()})


if __name__ == "__main__":
    main()
