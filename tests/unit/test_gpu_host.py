"""The driver/CUDA decision over faked hosts: no driver, older, newer, compat libraries, devices."""

from __future__ import annotations

from pathlib import Path

import pytest

from image_classifier import gpu_host
from image_classifier.entry import environment_for
from image_classifier.gpu_host import HostFacts, cuda_refusal, decide, gpu_expected, read_host

PROC_535 = "NVRM version: NVIDIA UNIX x86_64 Kernel Module  535.183.01  Sun May 12 19:39:15 UTC 2024\nGCC version:  gcc 10\n"
PROC_580_OPEN = "NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  580.95.05  Release Build  (dvs-builder@U16)\n"
CUDA_13, CUDA_12_8 = (13, 0), (12, 8)


def _facts(driver=None, devices=("/dev/nvidia0",), cuda=CUDA_13, compat=None) -> HostFacts:
    return HostFacts(driver, devices, cuda, Path("/usr/local/cuda/compat") if compat else None, compat)


def _host(root: Path, proc: str | None = None, devices: int = 0, compat: tuple[str, ...] = ()) -> Path:
    if proc is not None:
        (root / "proc/driver/nvidia").mkdir(parents=True)
        (root / "proc/driver/nvidia/version").write_text(proc)
    (root / "dev").mkdir(parents=True, exist_ok=True)
    for i in range(devices):
        (root / "dev" / f"nvidia{i}").touch()
    (root / "dev" / "nvidiactl").touch()  # not a GPU
    folder = root / "usr/local/cuda/compat"
    folder.mkdir(parents=True)
    for name in compat:
        (folder / name).touch()
    return root


def test_a_host_without_driver_or_devices_is_plain_cpu(tmp_path):
    facts = read_host({}, _host(tmp_path))
    assert facts.driver is None and facts.devices == () and facts.compat_dir is None
    assert decide(facts).mode == "cpu"


def test_both_proc_formats_and_device_nodes_are_read(tmp_path):
    facts = read_host({}, _host(tmp_path / "a", PROC_535, devices=2))
    assert facts.driver == (535, 183, 1) and facts.devices == ("/dev/nvidia0", "/dev/nvidia1")
    assert read_host({}, _host(tmp_path / "b", PROC_580_OPEN)).driver == (580, 95, 5)


def test_the_newest_compat_library_names_the_compat_driver(tmp_path):
    names = ("libcuda.so", "libcuda.so.1", "libcuda.so.575.57.08", "libcuda.so.580.65.06", "libnvidia-ptxjitcompiler.so.1")
    facts = read_host({}, _host(tmp_path, PROC_535, devices=1, compat=names))
    assert facts.compat_driver == (580, 65, 6) and facts.compat_dir == Path("/usr/local/cuda/compat")
    other = read_host({"IMAGE_CLASSIFIER_CUDA_COMPAT_DIR": "/elsewhere"}, tmp_path)
    assert other.compat_dir is None


def test_the_image_cuda_is_read_without_loading_torch():
    import sys

    loaded = "torch" in sys.modules
    version = gpu_host.read_image_cuda()
    assert version is None or version[0] in gpu_host.MINIMUM_DRIVER
    assert ("torch" in sys.modules) == loaded


@pytest.mark.parametrize(
    ("facts", "mode"),
    [
        (_facts(driver=(580, 95, 5)), "native"),
        (_facts(driver=(580, 65, 6)), "native"),
        (_facts(driver=(535, 183, 1), cuda=CUDA_12_8), "native"),  # CUDA 12 minor-version compatibility
        (_facts(driver=(470, 256, 2), cuda=CUDA_12_8), "unusable"),
        (_facts(driver=(535, 183, 1)), "unusable"),
        (_facts(driver=(535, 183, 1), compat=(580, 65, 6)), "compat"),
        (_facts(driver=(535, 183, 1), compat=(575, 57, 8)), "unusable"),  # compat libraries too old for CUDA 13
        (_facts(driver=(570, 195, 3), compat=(580, 65, 6)), "compat"),
        (_facts(driver=(550, 144, 1), compat=(580, 65, 6)), "unusable"),  # R550: not a forward-compatibility target
        (_facts(driver=(470, 256, 2), compat=(580, 65, 6)), "unusable"),  # R470: end of life, no forward compatibility
        (_facts(driver=(590, 1), compat=(580, 65, 6)), "native"),  # a newer driver never takes the older compat libs
        (_facts(driver=None), "unusable"),  # devices without a driver
        (_facts(driver=(580, 95, 5), cuda=None), "unusable"),  # a CPU-only torch build on a GPU host
    ],
)
def test_the_decision(facts, mode):
    decision = decide(facts)
    assert decision.mode == mode, decision.reason
    assert (decision.library_path == "/usr/local/cuda/compat") == (mode == "compat")


def test_an_unusable_driver_names_what_was_found_what_is_needed_and_the_fix():
    reason = decide(_facts(driver=(535, 183, 1))).reason
    assert "driver 535.183.1 found" in reason and "needs driver >= 580.65.6" in reason
    assert "InferenceAmiVersion" in reason and "CUDA_COMPAT_IMAGE" in reason and "IMAGE_CLASSIFIER_ALLOW_CPU=true" in reason


@pytest.mark.parametrize(
    ("environ", "instance_type", "devices", "expected"),
    [
        ({}, None, (), None),
        ({"SM_NUM_GPUS": "0"}, "ml.m5.xlarge", (), None),
        ({"SM_NUM_GPUS": "4"}, None, (), "SM_NUM_GPUS=4"),
        ({}, "ml.g5.xlarge", (), "instance type ml.g5.xlarge"),
        ({}, "ml.p4d.24xlarge", (), "instance type ml.p4d.24xlarge"),
        ({}, None, ("/dev/nvidia0",), "NVIDIA device(s) visible: /dev/nvidia0"),
    ],
)
def test_when_a_gpu_is_expected(environ, instance_type, devices, expected):
    assert gpu_expected(_facts(devices=devices), environ, instance_type) == expected


def test_the_refusal_and_the_cpu_opt_in():
    old = _facts(driver=(535, 183, 1))
    reason = cuda_refusal("instance type ml.g5.xlarge", False, old, {})
    assert reason.startswith("a GPU is expected (instance type ml.g5.xlarge) but CUDA cannot be used: NVIDIA driver 535.183.1 found")
    assert cuda_refusal("instance type ml.g5.xlarge", False, old, {"IMAGE_CLASSIFIER_ALLOW_CPU": "true"}) is None
    assert cuda_refusal(None, False, old, {}) is None
    assert cuda_refusal("SM_NUM_GPUS=1", True, old, {}) is None
    # a new enough driver and still no CUDA (e.g. a GPU architecture the build has no kernels for)
    assert "torch cannot use CUDA" in cuda_refusal("SM_NUM_GPUS=1", False, _facts(driver=(580, 95, 5)), {})
    nothing = cuda_refusal("SM_NUM_GPUS=1", False, _facts(devices=()), {})
    assert "no NVIDIA GPU or driver is visible in the container" in nothing


def test_the_entry_puts_the_compat_libraries_first_once():
    env = environment_for("/usr/local/cuda/compat", {"LD_LIBRARY_PATH": "/a:/usr/local/cuda/compat:/b", "X": "1"})
    assert env == {"LD_LIBRARY_PATH": "/usr/local/cuda/compat:/a:/b", "X": "1"}
    assert environment_for(None, {"X": "1"}) == {"X": "1"}


def test_a_branch_without_forward_compatibility_is_named():
    reason = decide(_facts(driver=(470, 256, 2), compat=(580, 65, 6))).reason
    assert "driver branch 470 is not a forward-compatibility target of CUDA 13 (NVIDIA supports [535, 570])" in reason


@pytest.mark.parametrize(
    ("capability", "runs"),
    [((7, 0), False), ((7, 5), True), ((8, 0), True), ((8, 9), True), ((9, 0), True), ((12, 0), True), ((6, 1), False)],
)
def test_which_gpus_the_cuda_13_wheel_has_kernels_for(capability, runs):
    wheel = ["sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120"]  # torch 2.14.1 (CUDA 13.0): no Volta, no PTX
    assert gpu_host._runs_on(capability, wheel) == runs
    assert gpu_host._runs_on((7, 0), ["sm_75", "compute_70"])  # PTX is compiled for newer GPUs


def test_a_gpu_without_kernels_is_refused_with_its_name():
    reason = cuda_refusal(
        "instance type ml.p3.2xlarge",
        False,
        _facts(driver=(580, 95, 5)),
        {},
        "this build has kernels for sm_75 only, not for Tesla V100 (sm_70)",
    )
    assert "Tesla V100 (sm_70)" in reason and "ml.g4dn" in reason
