import pytest
import timm
import torchvision

from image_classifier.modeling.factory import classifier_of, replace_head
from image_classifier.modeling.freezing import apply_freeze, freeze_frozen_norms, stages


@pytest.fixture(scope="module")
def resnet():
    return timm.create_model("resnet18", num_classes=4)


def _trainable(model):
    return {n for n, p in model.named_parameters() if p.requires_grad}


def test_head_only(resnet):
    apply_freeze(resnet, 0)
    assert _trainable(resnet) == {"fc.weight", "fc.bias"}


def test_last_stages(resnet):
    apply_freeze(resnet, 1)
    trainable = _trainable(resnet)
    assert {"fc.weight", "fc.bias"} <= trainable
    assert all(n.startswith(("layer4.", "fc.")) for n in trainable) and any(n.startswith("layer4.") for n in trainable)
    apply_freeze(resnet, 2)
    assert any(n.startswith("layer3.") for n in _trainable(resnet))
    assert not any(n.startswith(("layer2.", "conv1")) for n in _trainable(resnet))


def test_everything(resnet):
    apply_freeze(resnet, None)
    assert len(_trainable(resnet)) == len(list(resnet.parameters()))


def test_frozen_batchnorm_stays_in_eval_mode(resnet):
    apply_freeze(resnet, 0)
    resnet.train()
    freeze_frozen_norms(resnet)
    assert not resnet.bn1.training and not resnet.layer4[1].bn2.training


def test_torchvision_models_get_a_new_head_and_stages():
    model = torchvision.models.get_model("mobilenet_v3_small", weights=None)
    replace_head(model, 7)
    assert classifier_of(model).out_features == 7
    assert len(stages(model)) >= 2
    apply_freeze(model, 0)
    assert _trainable(model) == {n for n, _ in model.named_parameters() if n.startswith("classifier.3.")}
