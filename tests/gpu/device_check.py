"""The GPU checks behind ``tests/gpu/run.sh``: five sections, each timed and bounded, one JSON out.

1. ``host``: the driver, the image's CUDA, the decision ``gpu_host`` makes, torch's view of the GPU;
2. ``tests``: the gpu-marked tests (``pytest -m gpu``; the Docker ones deselect themselves);
3. ``fine_tune``: ``train`` on CUDA with bf16 and channels_last (digits, ResNet-18, 3 epochs);
4. ``serve``: ``serve`` on CUDA against the naive handler under load (``local.bench.serve_bench``);
   skipped without Java, which multi-model-server needs;
5. ``bench``: the GPU section of ``local.bench.train_bench`` (ResNet-50 AMP training images/s).

Every section records its status (passed, failed, skipped, timed_out), its seconds and its figures,
so a partial run still says what it saw. 8 minutes in all.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
LIMITS = {"host": 60, "tests": 120, "fine_tune": 100, "serve": 140, "bench": 60}  # seconds, 480 in all
FINE_TUNE = {
    "model": "resnet18",
    "pretrained": "false",
    "image_size": "64",
    "epochs": "3",
    "batch_size": "128",
    "lr": "0.003",
    "amp": "bf16",
    "channels_last": "true",
    "log_interval": "5",
}


def _run(command: list[str], limit: float, **kw: Any) -> tuple[str, str]:
    """(status, output) of a command given ``limit`` seconds."""
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=limit, cwd=ROOT, **kw)
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        return "timed_out", out
    return ("passed" if done.returncode == 0 else "failed"), done.stdout + done.stderr


def host() -> dict[str, Any]:
    import torch

    from image_classifier import gpu_host

    facts = gpu_host.read_host()
    decision = gpu_host.decide(facts)
    count, why_not = gpu_host.torch_cuda()
    figures: dict[str, Any] = {
        "driver": gpu_host.show(facts.driver),
        "image_cuda": gpu_host.show(facts.image_cuda),
        "decision": decision.mode,
        "reason": decision.reason,
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "arch_list": torch.cuda.get_arch_list() if torch.cuda.is_available() else [],
        "usable_gpus": count,
        "why_not": why_not,
        "java": shutil.which("java") is not None,
        "pinned_torch": _pinned("torch") == torch.__version__.split("+")[0],
    }
    if count:
        figures["gpu"] = torch.cuda.get_device_name(0)
        figures["capability"] = ".".join(map(str, torch.cuda.get_device_capability(0)))
    return {"status": "passed" if count else "failed", "figures": figures}


def _pinned(name: str) -> str | None:
    for line in (ROOT / "docker" / "requirements.lock").read_text().splitlines():
        if line.startswith(f"{name}=="):
            return line.split("==", 1)[1].split()[0]
    return None


def tests(out: Path) -> dict[str, Any]:
    report = out / "gpu-tests.xml"
    command = [sys.executable, "-m", "pytest", "-m", "gpu", "tests/gpu", "tests/unit", "tests/contract", "-q", "-p", "no:cacheprovider"]
    status, output = _run([*command, f"--junitxml={report}"], LIMITS["tests"])
    return {"status": status, "figures": _counts(output), "tail": output[-1500:]}


def _counts(output: str) -> dict[str, int]:
    return {kind: int(n) for n, kind in re.findall(r"(\d+) (passed|failed|skipped|errors?|deselected)", output)}


def fine_tune() -> dict[str, Any]:
    from local.sample_data import write_digits, write_job

    with tempfile.TemporaryDirectory(prefix="gpu-fine-tune-") as tmp:
        base = Path(tmp) / "opt_ml"
        write_job(base, write_digits(Path(tmp) / "digits", size=64), FINE_TUNE)
        env = {**os.environ, "SAGEMAKER_BASE_DIR": str(base), "SM_NUM_GPUS": "1"}
        status, output = _run([sys.executable, "-m", "image_classifier.training.launcher"], LIMITS["fine_tune"], env=env)
    epochs = [float(v) for v in re.findall(r"event=epoch .*?images_per_sec=([\d.]+)", output)]
    final = dict(re.findall(r"(test_acc|train_seconds)=([\d.]+)", " ".join(re.findall(r"event=final .*", output))))
    figures = {
        "device": (re.findall(r"event=start .*?device=(\S+)", output) or ["?"])[0],
        "images_per_sec_by_epoch": epochs,
        **{k: float(v) for k, v in final.items()},
    }
    if status == "passed" and figures["device"] != "cuda:0":
        status = "failed"
    return {"status": status, "figures": figures, "tail": output[-1500:] if status != "passed" else ""}


def serve(out: Path) -> dict[str, Any]:
    if shutil.which("java") is None:
        return {"status": "skipped", "reason": "no Java: multi-model-server (and so serve) cannot start here"}
    command = [sys.executable, "-m", "local.bench.serve_bench", "--device", "cuda", "--requests-c1", "40", "--requests-c16", "160"]
    status, output = _run([*command, "--name", "serving_gpu_check", "--wait-seconds", "5"], LIMITS["serve"])
    figures = _json_tail(output)
    if status == "passed":
        shutil.copy(ROOT / "local/bench/results/serving_gpu_check.json", out)
    return {"status": status, "figures": figures, "tail": output[-1500:] if status != "passed" else ""}


def bench() -> dict[str, Any]:
    command = [sys.executable, "-m", "local.bench.train_bench", "--gpu", "--gpu-per-class", "16", "--pairs", "5"]
    status, output = _run(command, LIMITS["bench"])
    return {"status": status, "figures": _json_tail(output), "tail": output[-1500:] if status != "passed" else ""}


def _json_tail(output: str) -> Any:
    start = output.rfind("\n{")
    try:
        return json.loads(output[start + 1 :]) if start >= 0 else {}
    except ValueError:
        return {}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "gpu-results")
    parser.add_argument("--sections", default=",".join(LIMITS), help=f"comma-separated, of {', '.join(LIMITS)}")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    sections = {"host": host, "tests": lambda: tests(args.out), "fine_tune": fine_tune, "serve": lambda: serve(args.out), "bench": bench}
    sections = {name: run for name, run in sections.items() if name in args.sections.split(",")}
    results: dict[str, Any] = {"started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "python": sys.executable}
    for name, section in sections.items():
        started = time.monotonic()
        try:
            results[name] = section()
        except Exception as exc:  # noqa: BLE001 - one broken section must not lose the others' figures
            results[name] = {"status": "failed", "error": f"{type(exc).__name__}: {exc}"}
        results[name]["seconds"] = round(time.monotonic() - started, 1)
        (args.out / "gpu.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
        print(f"event=gpu_section name={name} status={results[name]['status']} seconds={results[name]['seconds']}", flush=True)
    sys.exit(0 if all(r["status"] in ("passed", "skipped") for k, r in results.items() if isinstance(r, dict)) else 1)


if __name__ == "__main__":
    main()
