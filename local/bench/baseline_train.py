"""THE BASELINE: the typical hand-written training loop for this task. Fixed; do not tune it.

This is what a user would otherwise run, and every training figure we publish is a ratio against
it. It stays exactly as such a script is usually written, on purpose: making it faster here
(workers, channels_last, bf16, eval-mode BatchNorm, cached features, a larger batch) would only
make our ratios look worse than what users actually gain, or, tuned down, better. Any change to
this file must be a fix of a bug that makes it *unlike* the typical script, and must say so.

What it is, line by line:
- data: ``torchvision.datasets.ImageFolder`` (PIL decoding), ``Resize(256)`` + ``CenterCrop(224)``
  (deterministic: the same transform as evaluation, no augmentation), ``ToTensor`` + ImageNet
  ``Normalize``; ``DataLoader(batch_size=64, shuffle=True, num_workers=0)``;
- model: torchvision ResNet-50 (random init: ImageNet weights are not available offline, and the
  weights do not change the speed), every backbone parameter ``requires_grad=False``, a new ``fc``;
- training: fp32, NCHW, ``model.train()`` for the whole network, SGD (lr 0.01, momentum 0.9) on
  ``fc`` only, ``CrossEntropyLoss``, the plain loop; an optional validation pass per epoch
  (``model.eval()``, ``torch.no_grad()``, the same loader settings without shuffling).

It prints one JSON line per epoch: ``images_per_s`` and ``epoch_seconds`` of the training loop
(from asking for the first batch to the last optimiser step), ``valid_seconds`` if validating.

    python -m local.bench.baseline_train --train DIR [--valid DIR] [--epochs 1]
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import torchvision
from torch import nn
from torch.utils.data import DataLoader
from torchvision import transforms

BATCH_SIZE = 64
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def loader(folder: str, shuffle: bool) -> DataLoader:
    transform = transforms.Compose(
        [transforms.Resize(256), transforms.CenterCrop(224), transforms.ToTensor(), transforms.Normalize(MEAN, STD)]
    )
    dataset = torchvision.datasets.ImageFolder(folder, transform=transform)
    return DataLoader(dataset, batch_size=BATCH_SIZE, shuffle=shuffle, num_workers=0)


def build_model(num_classes: int) -> nn.Module:
    model = torchvision.models.resnet50(weights=None)
    for parameter in model.parameters():
        parameter.requires_grad = False
    model.fc = nn.Linear(model.fc.in_features, num_classes)
    return model


def main(args: argparse.Namespace) -> None:
    torch.manual_seed(0)
    train_loader = loader(args.train, shuffle=True)
    valid_loader = loader(args.valid, shuffle=False) if args.valid else None
    model = build_model(len(train_loader.dataset.classes))  # type: ignore[attr-defined]
    optimizer = torch.optim.SGD(model.fc.parameters(), lr=0.01, momentum=0.9)
    criterion = nn.CrossEntropyLoss()
    for epoch in range(args.epochs):
        model.train()
        start = time.perf_counter()
        seen = correct = 0
        for images, labels in train_loader:
            outputs = model(images)
            loss = criterion(outputs, labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            seen += labels.size(0)
            correct += (outputs.argmax(1) == labels).sum().item()
        seconds = time.perf_counter() - start
        result = {"epoch": epoch + 1, "images": seen, "epoch_seconds": seconds, "images_per_s": seen / seconds, "train_acc": correct / seen}
        if valid_loader is not None:
            model.eval()
            start = time.perf_counter()
            valid_correct = valid_seen = 0
            with torch.no_grad():
                for images, labels in valid_loader:
                    valid_correct += (model(images).argmax(1) == labels).sum().item()
                    valid_seen += labels.size(0)
            result.update(valid_seconds=time.perf_counter() - start, valid_acc=valid_correct / valid_seen)
        print(json.dumps(result), flush=True)


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", required=True, help="ImageFolder tree: one sub-folder per class")
    parser.add_argument("--valid", help="optional validation tree, evaluated after every epoch")
    parser.add_argument("--epochs", type=int, default=1)
    return parser


if __name__ == "__main__":
    main(get_args_parser().parse_args())
