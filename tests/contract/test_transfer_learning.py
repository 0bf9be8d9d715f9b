"""Real transfer learning: ImageNet-pretrained EfficientNet-Lite0 on real Fashion-MNIST photos."""

from __future__ import annotations

import tarfile

import pytest
from safetensors.torch import load_file

from local.demo import DEMO_HYPERPARAMETERS
from tests.helpers import read_json, run_train

# The demo's own configuration, so this test also proves what `make demo` prints.
FASHION_HPS = {k: v for k, v in DEMO_HYPERPARAMETERS.items() if k != "pretrained"}


@pytest.mark.slow
def test_pretrained_beats_random_init_by_ten_points(tmp_path, fashion_data, lite0_weights):
    """Both claims at once: >= 85 % test accuracy, and random init at least 10 points lower."""
    pre = run_train(tmp_path / "pre", fashion_data, {**FASHION_HPS, "pretrained": "true"}, channels={"pretrained": lite0_weights.parent})
    assert pre.returncode == 0, pre.stdout[-3000:]
    assert "event=pretrained_loaded source=channel" in pre.stdout
    scratch = run_train(tmp_path / "scratch", fashion_data, {**FASHION_HPS, "pretrained": "false"})
    assert scratch.returncode == 0, scratch.stdout[-3000:]
    pre_acc = read_json(tmp_path / "pre" / "output" / "data" / "metrics.json")["final"]["test_acc"]
    scratch_acc = read_json(tmp_path / "scratch" / "output" / "data" / "metrics.json")["final"]["test_acc"]
    print(f"pretrained test_acc={pre_acc:.4f} random_init test_acc={scratch_acc:.4f}")
    assert pre_acc >= 0.85
    assert scratch_acc <= pre_acc - 0.10
    card = read_json(tmp_path / "pre" / "model" / "model_card.json")
    assert card["pretrained"]["source"] == "channel" and card["preprocessing"]["mean"] == [0.5, 0.5, 0.5]
    assert card["metrics"]["test_acc"] == pytest.approx(pre_acc)


def test_head_only_leaves_every_frozen_tensor_bit_identical(tmp_path, digits_data, lite0_weights):
    hps = {
        "model": "tf_efficientnet_lite0",
        "image_size": "32",
        "epochs": "2",
        "batch_size": "64",
        "lr": "0.01",
        "freeze": "head",
        "num_workers": "1",
    }
    result = run_train(tmp_path, digits_data, hps, channels={"pretrained": lite0_weights.parent})
    assert result.returncode == 0, result.stdout[-3000:]
    before = load_file(str(lite0_weights))
    after = load_file(str(tmp_path / "model" / "model.safetensors"))
    backbone = [k for k in after if not k.startswith("classifier.")]
    assert len(backbone) == len(before) - 2
    changed = [k for k in backbone if not before[k].equal(after[k])]
    assert changed == []  # weights, biases and BatchNorm running statistics alike
    assert not after["classifier.weight"].equal(before["classifier.weight"][:10])
    assert "event=param_group name=head lr=0.01" in result.stdout and "name=backbone " not in result.stdout


def test_full_fine_tune_uses_the_lower_backbone_learning_rate(tmp_path, digits_data, lite0_weights):
    hps = {
        "model": "tf_efficientnet_lite0",
        "image_size": "32",
        "epochs": "1",
        "batch_size": "64",
        "lr": "0.02",
        "backbone_lr_mult": "0.25",
        "num_workers": "1",
    }
    result = run_train(tmp_path, digits_data, hps, channels={"pretrained": lite0_weights.parent})
    assert result.returncode == 0, result.stdout[-3000:]
    assert "event=param_group name=head lr=0.02 " in result.stdout
    assert "event=param_group name=backbone lr=0.005 " in result.stdout
    before = load_file(str(lite0_weights))
    after = load_file(str(tmp_path / "model" / "model.safetensors"))
    assert not before["conv_stem.weight"].equal(after["conv_stem.weight"])


def test_a_torchvision_model_trains_end_to_end(tmp_path, digits_data):
    hps = {
        "model": "torchvision/mobilenet_v3_small",
        "pretrained": "false",
        "image_size": "32",
        "epochs": "1",
        "batch_size": "64",
        "num_workers": "1",
        "freeze": "last:2",
    }
    result = run_train(tmp_path, digits_data, hps)
    assert result.returncode == 0, result.stdout[-3000:]
    card = read_json(tmp_path / "model" / "model_card.json")
    assert card["architecture"] == "torchvision/mobilenet_v3_small" and card["preprocessing"]["mean"] == [0.485, 0.456, 0.406]
    assert load_file(str(tmp_path / "model" / "model.safetensors"))["classifier.3.weight"].shape[0] == 10


def test_warm_start_from_a_previous_artifact(tmp_path, digits_data, digits_job):
    base, _ = digits_job
    from tests.helpers import DIGITS_HPS

    channel = tmp_path / "model-channel"  # what SageMaker puts in a channel from S3: the model.tar.gz itself
    channel.mkdir()
    with tarfile.open(channel / "model.tar.gz", "w:gz") as archive:
        for path in (base / "model").iterdir():
            archive.add(path, arcname=path.name)
    result = run_train(tmp_path / "job", digits_data, {**DIGITS_HPS, "epochs": "1", "lr": "0.0003"}, channels={"model": channel})
    assert result.returncode == 0, result.stdout[-3000:]
    assert "event=warm_start classes_match=True" in result.stdout
    first = read_json(tmp_path / "job" / "output" / "data" / "metrics.json")["history"][0]["valid_acc"]
    assert first >= read_json(base / "output" / "data" / "metrics.json")["final"]["best_valid_acc"] - 0.05
