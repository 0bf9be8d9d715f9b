"""deploy.weights against real timm/torchvision pretrained loading, offline, with seeded caches.

The caches are laid out exactly as huggingface_hub and torch hub write them, filled with
random-init weights saved here; any attempt to download fails the test.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
import torchvision
from safetensors.torch import load_file, save_file

from deploy.weights import fetch_weights, main
from image_classifier.errors import UserError
from image_classifier.modeling.factory import build_architecture, create_model
from image_classifier.modeling.pretrained import find_pretrained
from image_classifier.modeling.weights_io import sha256_of
from tests.helpers import REPO_ROOT

TIMM_MODEL = "test_resnet"  # a real timm model (0.5 M parameters) whose weights live on the HF hub
TORCHVISION_MODEL = "torchvision/mobilenet_v3_small"
REVISION = "0123456789abcdef0123456789abcdef01234567"


def _random_state(model: torch.nn.Module, seed: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    for module in model.modules():
        if hasattr(module, "reset_parameters"):
            module.reset_parameters()
    return {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}


def _seed_hf_cache(hub_cache: Path, repo_id: str, state: dict[str, torch.Tensor]) -> None:
    """models--<org>--<name>/{blobs/<sha>, snapshots/<rev>/model.safetensors -> blob, refs/main}."""
    repo = hub_cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "blobs").mkdir(parents=True)
    staged = repo / "blobs" / "staged"
    save_file(state, str(staged))
    blob = staged.rename(repo / "blobs" / hashlib.sha256(staged.read_bytes()).hexdigest())
    snapshot = repo / "snapshots" / REVISION
    snapshot.mkdir(parents=True)
    (snapshot / "model.safetensors").symlink_to(os.path.relpath(blob, snapshot))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(REVISION)


def _offline_env(tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "HF_HOME": str(tmp_path / "hf-home"),
            "HF_HUB_CACHE": str(tmp_path / "hf-home" / "hub"),
            "HF_HUB_OFFLINE": "1",
            "TORCH_HOME": str(tmp_path / "torch-home"),
            # belt and braces: any request that slips through goes to a closed port
            "HTTP_PROXY": "http://127.0.0.1:9",
            "HTTPS_PROXY": "http://127.0.0.1:9",
            "NO_PROXY": "",
        }
    )
    return env


def _cli(tmp_path: Path, model: str, out: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "deploy.weights", "--model", model, "--out", str(out)],
        env=_offline_env(tmp_path),
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=180,
    )


def _assert_equal(actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert sorted(actual) == sorted(expected)
    for key, value in expected.items():
        assert torch.equal(actual[key], value), key


@pytest.fixture
def no_baked_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("IMAGE_CLASSIFIER_PRETRAINED_DIR", str(tmp_path / "no-baked-weights"))


def test_timm_weights_from_the_hub_cache_become_a_pretrained_channel(tmp_path, no_baked_weights, monkeypatch):
    hub_id = timm.create_model(TIMM_MODEL, pretrained=False).pretrained_cfg["hf_hub_id"]
    seeded = _random_state(build_architecture(TIMM_MODEL), seed=11)
    _seed_hf_cache(tmp_path / "hf-home" / "hub", hub_id, seeded)
    out = tmp_path / "pretrained"

    result = _cli(tmp_path, TIMM_MODEL, out)

    assert result.returncode == 0, result.stderr[-3000:]
    path = Path(result.stdout.strip())
    assert path == out / f"{TIMM_MODEL}.safetensors"
    assert sorted(p.name for p in out.iterdir()) == [path.name]  # usable as a channel as is
    _assert_equal(load_file(str(path)), seeded)
    assert f"event=weights_ready model={TIMM_MODEL} file={path} sha256={sha256_of(path)} tensors={len(seeded)}" in result.stderr

    # the trainer's lookup: the folder as the pretrained channel ...
    source = find_pretrained(TIMM_MODEL, build_architecture(TIMM_MODEL), out)
    assert (source.kind, source.path) == ("channel", path)
    built = create_model(TIMM_MODEL, 3, pretrained=True, image_size=None, pretrained_channel=out)
    assert built.weights is not None and built.weights.kind == "channel"
    assert torch.equal(built.model.state_dict()["conv1.0.weight"], seeded["conv1.0.weight"])
    # ... and the folder baked into the image as /opt/pretrained
    monkeypatch.setenv("IMAGE_CLASSIFIER_PRETRAINED_DIR", str(out))
    assert find_pretrained(TIMM_MODEL, build_architecture(TIMM_MODEL), None).kind == "baked"


def test_missing_cache_entry_fails_with_one_clear_line(tmp_path, monkeypatch, capsys):
    """In-process (huggingface_hub read the variables at import, so its constants are set too)."""
    from huggingface_hub import constants

    for key, value in _offline_env(tmp_path).items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-home" / "hub"))
    out = tmp_path / "pretrained"

    assert main(["--model", TIMM_MODEL, "--out", str(out)]) == 1

    captured = capsys.readouterr()
    assert captured.out == "" and "Traceback" not in captured.err
    error = captured.err.strip().splitlines()[-1]
    assert error.startswith(f"error: cannot fetch the ImageNet weights of '{TIMM_MODEL}' from timm/test_resnet.r160_in1k")
    assert "LocalEntryNotFoundError" in error and str(tmp_path / "hf-home" / "hub") in error and "HF_HUB_OFFLINE" in error
    assert not out.exists() or not any(out.iterdir())


def test_torchvision_weights_from_the_torch_hub_cache(tmp_path, no_baked_weights, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))

    def no_download(url, *args, **kwargs):
        raise AssertionError(f"tried to download {url}")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_download)
    name = TORCHVISION_MODEL.split("/", 1)[1]
    url = torchvision.models.get_model_weights(name).DEFAULT.url
    seeded = _random_state(build_architecture(TORCHVISION_MODEL), seed=5)
    checkpoint = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)
    checkpoint.parent.mkdir(parents=True)
    torch.save(seeded, checkpoint)
    out = tmp_path / "pretrained"

    path = fetch_weights(TORCHVISION_MODEL, out)

    assert path == out / "torchvision_mobilenet_v3_small.safetensors"
    _assert_equal(load_file(str(path)), seeded)
    source = find_pretrained(TORCHVISION_MODEL, build_architecture(TORCHVISION_MODEL), out)
    assert (source.kind, source.path) == ("channel", path)
    create_model(TORCHVISION_MODEL, 4, pretrained=True, image_size=None, pretrained_channel=out)


def test_weights_that_do_not_match_the_architecture_are_not_kept(tmp_path, monkeypatch):
    state = _random_state(build_architecture(TIMM_MODEL), seed=3)
    state.pop("fc.bias")
    state["extra.weight"] = torch.zeros(2)
    state["conv1.0.weight"] = torch.zeros(1, 1, 1, 1)
    monkeypatch.setattr("deploy.weights.pretrained_state", lambda name, arch: (state, "seeded"))
    out = tmp_path / "pretrained"

    with pytest.raises(UserError) as raised:
        fetch_weights(TIMM_MODEL, out)

    message = str(raised.value)
    assert "missing 1 ['fc.bias']" in message and "unexpected 1 ['extra.weight']" in message
    assert "conv1.0.weight (1, 1, 1, 1)" in message
    assert list(out.iterdir()) == []  # not even a temporary file


def test_unknown_model_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="unknown model 'no_such_net'"):
        fetch_weights("no_such_net", tmp_path)
