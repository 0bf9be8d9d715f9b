"""How the loaded model runs: precision (fp32 or bf16) and graph (eager or frozen), chosen at load by measurement.

Why measure instead of assuming: bf16 doubles a matmul's rate on CPUs with AVX512-BF16/AMX and
GPUs, but depthwise convolutions and casts can make a network slower in bf16 (the trainer saw it
on EfficientNet-Lite0), and a chip without bf16 units emulates it. So each worker times its own
model on a real batch shape in every allowed mode and keeps the fastest. bf16 is only tried for
models of at least ``MIN_GFLOP_FOR_BF16`` per image (counted, not timed, so every process of a
deployment decides alike: below it a forward pass is a few ms of a request and fp32 keeps answers
exact), must be at least ``SPEED_UP_REQUIRED`` faster, and its logits on a probe batch must stay
within cosine ``MIN_COSINE`` of fp32's (a model that overflows or loses its precision in bf16
stays fp32).

The frozen graph is ``torch.jit.trace`` + ``freeze`` + ``optimize_for_inference``: batch norm
folded into the convolutions, conv+add+relu fused by oneDNN, weights pre-packed. It needs no C
compiler (the image has none; ``torch.compile``'s CPU backend does) and costs well under a second
at load; if tracing fails (a model with data-dependent control flow), eager is kept.

``IMAGE_CLASSIFIER_PRECISION`` (auto | fp32 | bf16) and ``IMAGE_CLASSIFIER_GRAPH`` (auto | eager |
frozen) force a choice; ``event=serve_precision`` logs the decision with the timings behind it.
"""

from __future__ import annotations

import copy
import logging
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from image_classifier.errors import UserError

log = logging.getLogger(__name__)
PRECISIONS = ("fp32", "bf16")
GRAPHS = ("eager", "frozen")
SPEED_UP_REQUIRED = 1.15  # bf16 only when clearly faster: the decision must not flip on timing noise
MIN_GFLOP_FOR_BF16 = 1.0  # ResNet-50 at 224 px: 8.2; EfficientNet-Lite0: 0.8; ResNet-18 at 32 px: 0.07
MIN_COSINE = 0.99  # bf16 vs fp32 logits on the probe: 0.9998 for ResNet-50, 0.9999 for ResNet-18
TIMED_RUNS = 3
# TorchScript's profiling executor records on the first calls and optimises after them, and oneDNN
# creates its kernels on first use: timing the second call made a 1.5x faster bf16 graph look 1.17x
# faster, so the choice flipped between runs (local/bench/results/serving.json of 2026-12-01)
WARMUP_RUNS = 3


@dataclass
class Runner:
    """A prepared forward pass: an fp32 channels_last batch on the model's device in, fp32 logits out."""

    precision: str
    graph: str
    module: Callable[[torch.Tensor], torch.Tensor]
    dtype: torch.dtype = torch.float32
    timings_ms: dict[str, float] = field(default_factory=dict)

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        return self.module(batch.to(self.dtype)).float()


def _check_choice(name: str, value: str, allowed: tuple[str, ...]) -> str:
    value = (value or "auto").strip().lower()
    if value not in (*allowed, "auto"):
        raise UserError(f"{name}={value!r}: use auto, {' or '.join(allowed)}")
    return value


def build(model: nn.Module, precision: str, graph: str, example: torch.Tensor) -> Runner:
    """One runner; ``model`` (eval mode, channels_last) is left untouched."""
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    module: nn.Module = model if dtype == torch.float32 else copy.deepcopy(model).to(dtype)
    if graph == "frozen":
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # torch.jit's deprecation notices: it is the compiler-free path
            traced = torch.jit.trace(module, example.to(dtype), check_trace=False)
            module = torch.jit.optimize_for_inference(torch.jit.freeze(traced))
    return Runner(precision, graph, module, dtype)


@torch.inference_mode()
def time_ms(runner: Runner, example: torch.Tensor, runs: int = TIMED_RUNS) -> float:
    """Best of ``runs`` after ``WARMUP_RUNS`` calls: the least noisy estimate on a shared machine."""
    timings = [_call_ms(runner, example) for _ in range(runs + WARMUP_RUNS)]
    return min(timings[WARMUP_RUNS:])


@torch.inference_mode()
def time_pair_ms(first: Runner, second: Runner, example: torch.Tensor, rounds: int = TIMED_RUNS) -> tuple[float, float]:
    """Best of ``rounds`` of each, alternating: a burst of load (multi-model-server's JVM starts
    beside the loading worker) slows both alike instead of deciding the comparison."""
    best = [float("inf"), float("inf")]
    for _ in range(rounds):
        for i, runner in enumerate((first, second)):
            best[i] = min(best[i], _call_ms(runner, example))
    return best[0], best[1]


def _call_ms(runner: Runner, example: torch.Tensor) -> float:
    """One call's wall time, the GPU's queue drained before and after."""
    if example.is_cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    runner(example)
    if example.is_cuda:
        torch.cuda.synchronize()
    return (time.perf_counter() - start) * 1000


@torch.inference_mode()
def gflop_per_image(model: nn.Module, example: torch.Tensor) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        model(example)
    return counter.get_total_flops() / example.shape[0] / 1e9


@torch.inference_mode()
def agrees(reference: Runner, candidate: Runner, probe: torch.Tensor) -> bool:
    expected, got = reference(probe), candidate(probe)
    return bool(got.isfinite().all()) and float(torch.nn.functional.cosine_similarity(expected, got, dim=1).min()) >= MIN_COSINE


def bf16_supported(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())


def choose(model: nn.Module, example: torch.Tensor, probe: torch.Tensor, precision: str = "auto", graph: str = "auto") -> Runner:
    """The fastest allowed runner for ``model``; ``example`` is the batch timed, ``probe`` the one compared."""
    precision = _check_choice("IMAGE_CLASSIFIER_PRECISION", precision, PRECISIONS)
    graph = _check_choice("IMAGE_CLASSIFIER_GRAPH", graph, GRAPHS)
    gflop = gflop_per_image(model, example)
    precisions = [p for p in PRECISIONS if precision in (p, "auto")]
    reason = "forced"
    if precision == "auto" and not bf16_supported(example.device):
        precisions, reason = ["fp32"], "no_bf16_support"
    elif precision == "auto" and gflop < MIN_GFLOP_FOR_BF16:
        precisions, reason = ["fp32"], "small_model"
    graphs = [g for g in GRAPHS if graph in (g, "auto")]
    runners: dict[tuple[str, str], Runner] = {}
    timings: dict[tuple[str, str], float] = {}
    for p in precisions:
        tried = graphs
        if p != precisions[0] and timings:  # bf16 in the graph that won in fp32: timing every pair would cost load time
            tried = [min(timings, key=timings.__getitem__)[1]]
        for g in tried:
            try:
                runners[p, g] = build(model, p, g, example)
            except Exception as exc:  # a model that cannot be traced is served eager
                if g == "eager":
                    raise
                log.warning(
                    "event=serve_graph_failed precision=%s error=%s message=%s", p, type(exc).__name__, str(exc)[:200].replace(" ", "_")
                )
                if graph == "frozen":
                    runners[p, "eager"] = build(model, p, "eager", example)
        if len(graphs) * len(precisions) > 1:
            timings |= {key: time_ms(runner, example) for key, runner in runners.items() if key not in timings}
    best: dict[str, tuple[str, str]] = {}
    for key in sorted(runners, key=lambda k: timings.get(k, 0.0)):
        best.setdefault(key[0], key)  # the fastest graph of each precision
    chosen = best.get("fp32") or best["bf16"]
    if len(best) == 2:
        # the deciding pair once more, interleaved: the sequential timings above were taken seconds
        # apart, and one of 15 servers of a benchmark run kept fp32 on a burst of load (2026-12-01)
        again = time_pair_ms(runners[best["fp32"]], runners[best["bf16"]], example)
        for key, ms in zip((best["fp32"], best["bf16"]), again, strict=True):
            timings[key] = min(timings[key], ms)
        speed_up = timings[best["fp32"]] / timings[best["bf16"]]
        if speed_up < SPEED_UP_REQUIRED:
            reason = "bf16_not_faster"
        elif not agrees(runners[best["fp32"]], runners[best["bf16"]], probe):
            reason = "bf16_accuracy_risk"
        else:
            chosen, reason = best["bf16"], "bf16_faster"
    runner = runners[chosen]
    runner.timings_ms = {f"{p}_ms": round(timings[key], 2) for p, key in best.items() if key in timings}
    runner.timings_ms |= {f"{p}_{g}_ms": round(ms, 2) for (p, g), ms in timings.items()}
    log.info(
        "event=serve_precision chosen=%s graph=%s reason=%s gflop_per_image=%.2f batch=%d device=%s %s",
        runner.precision,
        runner.graph,
        reason,
        gflop,
        example.shape[0],
        example.device.type,
        " ".join(f"{k}={v}" for k, v in runner.timings_ms.items()),
    )
    return runner
