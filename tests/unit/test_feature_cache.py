"""The cached-features fast path: same logits as the full model, same batches, refused where wrong."""

from __future__ import annotations

import timm
import torch
import torchvision
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader

from image_classifier.data.datasets import LabelledImages, ResumableSampler
from image_classifier.data.presets import DataConfig, eval_transform
from image_classifier.hyperparameters import Hyperparameters
from image_classifier.modeling.factory import classifier_of, replace_head
from image_classifier.modeling.freezing import apply_freeze
from image_classifier.training import feature_cache
from image_classifier.training.engine import Precision, StopFlag

CPU = torch.device("cpu")
CONFIG = DataConfig(input_size=32, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), interpolation="bilinear", crop_pct=0.875)


def _photos(folder, count=10):
    """Real photos (scikit-image's) cropped differently, as files, with labels."""
    from skimage import data

    folder.mkdir(parents=True, exist_ok=True)
    samples = []
    for i in range(count):
        photo = (data.astronaut if i % 2 else data.coffee)()
        path = folder / f"{i}.jpg"
        Image.fromarray(photo[i * 9 : i * 9 + 200, i * 7 : i * 7 + 260]).save(path, quality=90)
        samples.append((path, i % 3))
    return samples


def _frozen(model: nn.Module, classes: int = 3) -> nn.Module:
    replace_head(model, classes)
    apply_freeze(model, 0)
    return model.eval()


def _extract(model, samples, precision, batch_size=4):
    dataset = feature_cache.indexed(LabelledImages(samples, eval_transform(CONFIG)))
    loader = DataLoader(dataset, batch_size=batch_size, collate_fn=feature_cache.collate_indexed)
    labels = [label for _, label in samples]
    return feature_cache.extract(model, classifier_of(model), loader, labels, list(range(len(samples))), CPU, precision, StopFlag())


def _full_logits(model, samples, precision):
    images = torch.stack([eval_transform(CONFIG)(Image.open(p).convert("RGB")) for p, _ in samples])
    with torch.inference_mode(), precision.autocast(CPU):
        return model(precision.to_device(images, CPU)).float()


def test_head_on_cached_features_gives_the_full_models_logits(tmp_path):
    samples = _photos(tmp_path)
    for model in (timm.create_model("resnet18"), torchvision.models.mobilenet_v3_small()):  # timm head; torchvision Dropout + Linear
        torch.manual_seed(0)
        model = _frozen(model)
        for precision, tolerance in ((Precision(None, None, True), 1e-5), (Precision(torch.bfloat16, None, True), 2e-2)):
            features = _extract(model, samples, precision)
            head = feature_cache.FeatureHead(classifier_of(model), feature_cache.head_dropout(model, classifier_of(model))).eval()
            with torch.inference_mode(), precision.autocast(CPU):
                cached = head(features.values).float()
            full = _full_logits(model, samples, precision)
            assert features.ok.all() and features.labels.tolist() == [label for _, label in samples]
            assert torch.allclose(cached, full, atol=tolerance * full.abs().max().item(), rtol=0), (type(model), precision.dtype)


def test_an_unreadable_image_leaves_a_hole_that_batches_skip_and_count(tmp_path):
    samples = _photos(tmp_path, count=6)
    samples[2][0].write_bytes(b"not a jpeg")
    features = _extract(_frozen(timm.create_model("resnet18")), samples, Precision(None, None, True))
    assert features.ok.tolist() == [True, True, False, True, True, True]
    batches = feature_cache.FeatureBatches(features, range(6), batch_size=4, drop_last=False)
    (first, labels, bad), (second, _, bad2) = list(batches)
    assert first.shape[0] == 3 and bad == 1 and labels.tolist() == [0, 1, 0] and bad2 == 0 and second.shape[0] == 2


def test_feature_batches_follow_the_image_loaders_order_and_resume():
    values = torch.arange(50, dtype=torch.float32)[:, None].repeat(1, 4)
    features = feature_cache.Features(values, torch.arange(50) % 5, torch.ones(50, dtype=torch.bool))
    for skip in (0, 20):
        sampler = ResumableSampler(50, seed=7, shuffle=True, with_seeds=False)
        sampler.set_epoch(3, skip)
        ours = [v[:, 0].long().tolist() for v, _, _ in feature_cache.FeatureBatches(features, sampler, 8, drop_last=True)]
        images = ResumableSampler(50, seed=7, shuffle=True, with_seeds=True)
        images.set_epoch(3, skip)
        reference = DataLoader(list(range(50)), batch_size=8, sampler=[i for i, _ in images], drop_last=True)
        assert ours == [b.tolist() for b in reference]


def test_gather_in_a_world_of_one_is_the_shard():
    from image_classifier.training.distributed import World

    shard = feature_cache.Features(torch.ones(3, 2), torch.zeros(3, dtype=torch.long), torch.ones(3, dtype=torch.bool))
    assert feature_cache.gather_split(shard, 3, World()) is shard


def _decide(model, **hps):
    hp = Hyperparameters(**{"freeze": "head", "augment": "none", **hps})
    if hp.trainable_stages is not None:
        apply_freeze(model, hp.trainable_stages)
    return feature_cache.decide(hp, model, classifier_of(model), input_size=32, device=CPU, debugger=hps.pop("debugger", False))


class _TwoHeads(nn.Module):
    """The output is not the classifier's (DeiT-style distillation heads average two)."""

    def __init__(self):
        super().__init__()
        self.body = timm.create_model("resnet18", num_classes=0)
        self.fc = nn.Linear(512, 3)
        self.other = nn.Linear(512, 3)

    def forward(self, x):
        features = self.body(x)
        return (self.fc(features) + self.other(features)) / 2


def test_the_fast_path_runs_only_where_it_is_the_same_training():
    resnet = lambda **kw: _frozen(timm.create_model("resnet18", **kw))  # noqa: E731
    assert _decide(resnet()) == feature_cache.Decision(True, "frozen_backbone_deterministic_inputs")
    assert _decide(resnet(), feature_cache="off").reason == "feature_cache_off"
    assert _decide(resnet(), freeze="none").reason == "backbone_trains"
    assert _decide(resnet(), freeze="last:1").reason == "backbone_trains"
    assert _decide(resnet(), augment="light").reason == "random_augmentation"
    assert _decide(resnet(), augment="standard").reason == "random_augmentation"
    assert feature_cache.decide(
        Hyperparameters(freeze="head", augment="none"), resnet(), classifier_of(resnet()), input_size=32, device=CPU, debugger=True
    ) == feature_cache.Decision(False, "debugger_hook")
    assert _decide(resnet(drop_path_rate=0.1)).reason == "stochastic_backbone_layers"
    assert _decide(resnet(drop_rate=0.2)).reason == "stochastic_backbone_layers"
    assert _decide(_frozen(torchvision.models.efficientnet_b0())).reason == "stochastic_backbone_layers"  # stochastic depth
    assert _decide(_frozen(torchvision.models.mobilenet_v3_small())).enabled  # its Dropout sits right before the classifier
    two = _TwoHeads()
    apply_freeze(two, 0)
    assert classifier_of(two) is two.other and _decide(two.eval()).reason == "output_is_not_the_classifier"
