"""GPU smoke test: AMP, channels_last, single-GPU torchrun with nccl. Runs wherever CUDA is."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from tests.helpers import DIGITS_HPS, read_json, train_env, write_job

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def test_amp_channels_last_torchrun_nccl(tmp_path, digits_data):
    # 8 epochs, not the CPU tests' 3: three reach ~0.70 on any device (0.705 on an H200, 0.69 on the CPU), eight ~0.95
    write_job(tmp_path, digits_data, {**DIGITS_HPS, "epochs": "8", "amp": "auto", "channels_last": "true"})
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=1",
        "--standalone",
        "-m",
        "image_classifier.training.launcher",
    ]
    result = subprocess.run(command, env=train_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:]
    assert "device=cuda:0" in result.stdout and "world_size=1" in result.stdout
    assert read_json(tmp_path / "output" / "data" / "metrics.json")["final"]["test_acc"] > 0.85


def test_adamw_is_fused_on_cuda():
    import timm

    from image_classifier.hyperparameters import Hyperparameters
    from image_classifier.training.optim import create_optimizer

    device = torch.device("cuda")
    optimizer = create_optimizer(timm.create_model("resnet18", num_classes=3).to(device), Hyperparameters(), device)
    assert isinstance(optimizer, torch.optim.AdamW) and optimizer.defaults["fused"] is True
    optimizer.step()  # the fused kernel accepts every parameter group
