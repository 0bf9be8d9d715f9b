"""The GPU-transform variant: the image built with NVIDIA's forward-compatibility libraries, and the real
entrypoint choosing them, or not, for the host's driver, inside the container.

NVIDIA's CUDA base image cannot be pulled here (no Docker Hub): a stand-in puts files named as its
``libcuda.so.<driver>`` where NVIDIA puts them (/usr/local/cuda/compat), and a fake ``nvidia-smi``
plays the host's driver (the entrypoint reads /proc/driver/nvidia/version, else nvidia-smi). The
variant shares every layer with the image the tier built but the copy of those files.
"""

from __future__ import annotations

import pytest

from image_classifier.gpu_host import parse_version, show
from tests.container.conftest import IMAGE
from tests.helpers import REPO_ROOT

pytestmark = [pytest.mark.container, pytest.mark.slow]

COMPAT_DRIVER = "580.95.05"  # what NVIDIA's CUDA 13.0 compat package stands in for
VARIANT = "image-classifier:cuda-compat-test"


@pytest.fixture(scope="module")
def variant(engine, image, build_args, tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("cuda-standin")
    base = next(a.split("=", 1)[1] for a in build_args if a.startswith("BASE_IMAGE="))
    (folder / "Dockerfile").write_text(
        f"FROM {base}\nRUN mkdir -p /usr/local/cuda/compat && touch /usr/local/cuda/compat/libcuda.so.{COMPAT_DRIVER} "
        "/usr/local/cuda/compat/libcuda.so.1 /usr/local/cuda/compat/libnvidia-ptxjitcompiler.so.1\n"
    )
    engine.docker("build", "--network", "host", "-t", "cuda-standin:13", str(folder), timeout=300)
    engine.docker(
        "build",
        "--network",
        "host",
        *build_args,
        "--build-arg",
        "CUDA_COMPAT_IMAGE=cuda-standin:13",
        "-t",
        VARIANT,
        str(REPO_ROOT),
        timeout=1800,
    )
    yield VARIANT
    engine.docker("image", "rm", "-f", VARIANT, "cuda-standin:13", check=False)


@pytest.mark.parametrize(
    ("driver", "mode"),
    [
        ("580.95.05", "native"),  # driver 580: the CUDA 13 build runs as it is
        ("535.247.01", "compat"),  # R535 (ml.g4dn/g5 transform hosts): the compatibility libraries go first
        ("470.256.02", "unusable"),  # R470: not a forward-compatibility target of CUDA 13: refused with the fix
    ],
)
def test_the_entrypoint_chooses_the_libraries_for_the_hosts_driver(engine, variant, tmp_path, driver, mode):
    smi = tmp_path / "nvidia-smi"
    smi.write_text(f"#!/bin/sh\necho {driver}\n")
    smi.chmod(0o755)
    ran = engine.docker(
        "run",
        "--rm",
        "--network",
        "none",
        "-v",
        f"{smi}:/usr/local/bin/nvidia-smi:ro",
        variant,
        "sh",
        "-c",
        'echo "LD=$LD_LIBRARY_PATH"',
        timeout=120,
    )
    out = ran.stdout + ran.stderr
    assert f"event=cuda_host mode={mode} driver={show(parse_version(driver))} image_cuda=13.0 needed=580.65.6" in out, out
    assert f"compat={show(parse_version(COMPAT_DRIVER))}" in out, out
    library = "LD=/usr/local/cuda/compat" if mode == "compat" else "LD="
    assert any(line.startswith(library) and (mode == "compat" or "/usr/local/cuda/compat" not in line) for line in out.splitlines())


def test_the_image_without_the_variant_carries_no_compatibility_libraries(engine, image, tmp_path):
    smi = tmp_path / "nvidia-smi"
    smi.write_text("#!/bin/sh\necho 535.247.01\n")
    smi.chmod(0o755)
    ran = engine.docker("run", "--rm", "--network", "none", "-v", f"{smi}:/usr/local/bin/nvidia-smi:ro", IMAGE, "true", timeout=120)
    assert "event=cuda_host mode=unusable driver=535.247.1" in ran.stderr and "compat=none" in ran.stderr, ran.stderr
