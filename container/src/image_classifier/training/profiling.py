"""Where the time goes: data wait vs compute per epoch, system utilisation, an opt-in trace.

The torch.profiler window (``profile=true``) writes a trace TensorBoard's profiler plugin
reads and a text summary of the heaviest operators. The system sampler is a daemon thread
reading psutil (and CUDA memory) once a second; it costs nothing measurable.
"""

from __future__ import annotations

import threading
import time
from contextlib import nullcontext
from pathlib import Path

import psutil
import torch


class SystemSampler:
    def __init__(self, interval: float = 1.0):
        self.interval = interval
        self.samples: list[dict[str, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="system-sampler", daemon=True)
        self._process = psutil.Process()

    def __enter__(self) -> SystemSampler:
        psutil.cpu_percent(None)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            sample = {
                "cpu_percent": psutil.cpu_percent(None),
                "rss_mb": self._process.memory_info().rss / 2**20,
                "system_memory_percent": psutil.virtual_memory().percent,
            }
            if torch.cuda.is_available():
                sample["gpu_memory_mb"] = torch.cuda.memory_allocated() / 2**20
                try:
                    sample["gpu_util_percent"] = float(torch.cuda.utilization())
                except Exception:  # noqa: BLE001 - pynvml absent: memory only
                    pass
            self.samples.append(sample)

    def summary(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for key in {k for s in self.samples for k in s}:
            values = [s[key] for s in self.samples if key in s]
            out[f"{key}_mean"] = sum(values) / len(values)
            out[f"{key}_max"] = max(values)
        out["samples"] = len(self.samples)
        return out


class StepTimer:
    """Splits each step into waiting for the loader and computing (synchronised on GPU)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.data_seconds = 0.0
        self.compute_seconds = 0.0
        self._mark = time.perf_counter()

    def reset(self) -> None:
        self.data_seconds = self.compute_seconds = 0.0
        self._mark = time.perf_counter()

    def data_ready(self) -> None:
        now = time.perf_counter()
        self.data_seconds += now - self._mark
        self._mark = now

    def step_done(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        now = time.perf_counter()
        self.compute_seconds += now - self._mark
        self._mark = now

    @property
    def data_fraction(self) -> float:
        total = self.data_seconds + self.compute_seconds
        return self.data_seconds / total if total else 0.0


def trace_window(enabled: bool, start_step: int, steps: int, trace_dir: Path, summary_file: Path):
    """A torch.profiler over steps [start_step, start_step + steps) of the first epoch."""
    if not enabled:
        return nullcontext(None)
    activities = [torch.profiler.ProfilerActivity.CPU]
    if torch.cuda.is_available():
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    trace_dir.mkdir(parents=True, exist_ok=True)

    def on_ready(prof: torch.profiler.profile) -> None:
        torch.profiler.tensorboard_trace_handler(str(trace_dir))(prof)
        summary_file.parent.mkdir(parents=True, exist_ok=True)
        summary_file.write_text(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=30))

    return torch.profiler.profile(
        activities=activities,
        schedule=torch.profiler.schedule(wait=max(0, start_step - 1), warmup=1 if start_step else 0, active=steps, repeat=1),
        on_trace_ready=on_ready,
        record_shapes=True,
        profile_memory=True,
    )
