"""Train the head on backbone features computed once, when that is exactly the same training.

With the whole backbone frozen (``freeze=head``, its normalisation layers in eval mode) and a
deterministic training transform (``augment=none``), every epoch feeds the classifier the same
features for the same image. So the backbone runs once per image (eval mode, inference_mode,
channels_last, the measured AMP choice) and every epoch trains the classifier alone on the stored
features: the part of a frozen-backbone tuning trial that costs almost everything becomes one pass.

The head trained here is the model's own classifier module, so checkpoints, the best-model file
and the artifact hold the full model (backbone + trained head) exactly as without the cache; the
batches come from the same seeded sampler, so resuming works the same way (the cache is
recomputed by the restarted job). Refused, with the reason logged, where it would change training:
a backbone that trains (``freeze=none``/``last:N``), random augmentation, random layers in the
backbone (dropout, drop-path), a Debugger hook (it expects the full model to run), a model whose
output is not its classifier's output, or sharded input (``data/shards.py``: too large to hold).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import BatchSampler, Dataset, Sampler

from image_classifier.hyperparameters import Hyperparameters
from image_classifier.metrics import format_line
from image_classifier.training.distributed import World
from image_classifier.training.engine import Precision, StopFlag, StopRequested

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Decision:
    enabled: bool
    reason: str  # one token, for the log line

    def log(self, hp: Hyperparameters) -> None:
        log.info(format_line("feature_cache", enabled=str(self.enabled).lower(), reason=self.reason, freeze=hp.freeze, augment=hp.augment))


def head_dropout(model: nn.Module, classifier: nn.Module) -> nn.Dropout | None:
    """An ``nn.Dropout`` right before the classifier in a Sequential (torchvision's heads): the head applies it."""
    for parent in model.modules():
        if isinstance(parent, nn.Sequential):
            children = list(parent)
            for i, child in enumerate(children):
                before = children[i - 1] if i > 0 else None
                if child is classifier and isinstance(before, nn.Dropout):
                    return before
    return None


def stochastic_layers(model: nn.Module, classifier: nn.Module) -> list[str]:
    """Layers that make the frozen backbone's features differ from one epoch to the next."""
    allowed = head_dropout(model, classifier)
    found = [] if not getattr(model, "drop_rate", 0) else ["drop_rate"]  # timm's functional dropout
    for name, module in model.named_modules():
        if module is allowed:
            continue
        rate = getattr(module, "p", None) if isinstance(module, nn.modules.dropout._DropoutNd) else None
        if rate is None and any(word in type(module).__name__.lower() for word in ("drop", "stochastic")):  # DropPath, StochasticDepth
            rate = next((getattr(module, a) for a in ("drop_prob", "p", "drop_rate") if isinstance(getattr(module, a, None), float)), None)
        if rate:
            found.append(name or type(module).__name__)
    return found


def classifier_is_last(model: nn.Module, classifier: nn.Module, input_size: int, device: torch.device) -> bool:
    """One tiny eval forward: is the model's output exactly what its classifier returned?"""
    seen: dict[str, torch.Tensor] = {}
    handle = classifier.register_forward_hook(lambda _m, _a, out: seen.__setitem__("out", out))
    was_training = model.training
    try:
        model.eval()
        with torch.inference_mode():
            out = model(torch.zeros(1, 3, input_size, input_size, device=device))
    finally:
        handle.remove()
        model.train(was_training)
    return isinstance(out, torch.Tensor) and "out" in seen and seen["out"].shape == out.shape and torch.equal(seen["out"], out)


def decide(
    hp: Hyperparameters,
    model: nn.Module,
    classifier: nn.Module,
    *,
    input_size: int,
    device: torch.device,
    debugger: bool,
    sharded: bool = False,
) -> Decision:
    if hp.feature_cache == "off":
        return Decision(False, "feature_cache_off")
    if sharded:
        return Decision(False, "sharded_input")  # the features of a data set too large to hold would not fit either
    if hp.trainable_stages != 0:
        return Decision(False, "backbone_trains")
    if hp.augment != "none":
        return Decision(False, "random_augmentation")
    if debugger:
        return Decision(False, "debugger_hook")
    if stochastic_layers(model, classifier):
        return Decision(False, "stochastic_backbone_layers")
    if not classifier_is_last(model, classifier, input_size, device):
        return Decision(False, "output_is_not_the_classifier")
    return Decision(True, "frozen_backbone_deterministic_inputs")


class FeatureHead(nn.Module):
    """What runs on cached features: the model's own classifier (and the dropout right before it)."""

    def __init__(self, classifier: nn.Module, dropout: nn.Dropout | None):
        super().__init__()
        self.classifier = classifier
        self.dropout = dropout if dropout is not None else nn.Identity()

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(features))


@dataclass
class Features:
    """Backbone features of one split in sample order (on the training device).

    ``ok`` (on the CPU, like the sampler's indices) is False where the image was unreadable.
    """

    values: torch.Tensor
    labels: torch.Tensor
    ok: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)


class FeatureBatches:
    """Batches of cached features in the order a ``DataLoader`` over ``sampler`` would give them.

    Yields ``(features, labels, n_bad)`` like the image loaders, so the epoch loop is unchanged.
    """

    def __init__(self, features: Features, sampler: Sampler, batch_size: int, drop_last: bool):
        self.features, self.sampler = features, sampler
        self._batches = BatchSampler(sampler, batch_size, drop_last)

    def __len__(self) -> int:
        return len(self._batches)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, int]]:
        for indices in self._batches:
            index = torch.as_tensor(indices, dtype=torch.long)
            keep = index[self.features.ok[index]]
            rows = keep.to(self.features.values.device)
            yield self.features.values[rows], self.features.labels[rows], len(index) - len(keep)


class _Indexed(Dataset):
    """The image dataset with each sample's position attached, so unreadable ones leave a known hole."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int):
        item = self.dataset[index]
        return None if item is None else (item[0], item[1], index)


def collate_indexed(batch: list) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    good = [item for item in batch if item is not None]
    if not good:
        return torch.empty(0), torch.empty(0, dtype=torch.long), torch.empty(0, dtype=torch.long)
    return (
        torch.stack([g[0] for g in good]),
        torch.tensor([g[1] for g in good], dtype=torch.long),
        torch.tensor([g[2] for g in good], dtype=torch.long),
    )


def indexed(dataset: Dataset) -> Dataset:
    return _Indexed(dataset)


@torch.inference_mode()
def extract(
    model: nn.Module,
    classifier: nn.Module,
    loader,
    labels: Sequence[int],
    positions: Sequence[int],
    device: torch.device,
    precision: Precision,
    stop: StopFlag,
) -> Features:
    """Run the backbone once over ``loader`` (an ``indexed`` dataset); capture the classifier's input.

    ``positions[i]`` is where the loader's i-th sample belongs in the returned split (its rank shard).
    """
    model.eval()
    captured: list[torch.Tensor] = []
    handle = classifier.register_forward_hook(lambda _m, args, _out: captured.append(args[0]))
    values: torch.Tensor | None = None
    ok = torch.zeros(len(positions), dtype=torch.bool)
    slot = {p: i for i, p in enumerate(positions)}
    try:
        for images, _labels, where in loader:
            if stop.requested:
                raise StopRequested(stop.signal_name or "SIGTERM")
            if where.numel() == 0:
                continue
            with precision.autocast(device):
                model(precision.to_device(images, device))
            batch = captured.pop().float().flatten(1)
            if values is None:
                values = torch.zeros(len(positions), batch.shape[1], dtype=torch.float32, device=device)
            rows = torch.as_tensor([slot[int(w)] for w in where], dtype=torch.long, device=device)
            values[rows] = batch
            ok[rows.cpu()] = True
    finally:
        handle.remove()
    if values is None:
        values = torch.zeros(len(positions), 1, device=device)
    label_tensor = torch.as_tensor([labels[p] for p in positions], dtype=torch.long)
    return Features(values, label_tensor.to(device), ok)


def gather_split(shard: Features, total: int, world: World) -> Features:
    """Every rank's shard (positions ``rank::world_size``) into the whole split, on every rank."""
    if not world.distributed:
        return shard
    rows = -(-total // world.size)
    dim = torch.tensor([shard.values.shape[1]], device=shard.values.device)
    dist.all_reduce(dim, op=dist.ReduceOp.MAX)

    def padded(t: torch.Tensor, *tail: int) -> torch.Tensor:
        out = torch.zeros(rows, *tail, dtype=t.dtype, device=t.device)
        if t.shape[1:] == out.shape[1:]:  # a shard without one readable image has no feature width
            out[: len(t)] = t
        return out

    parts = {
        "values": padded(shard.values, int(dim)),
        "labels": padded(shard.labels),
        "ok": padded(shard.ok.to(shard.values.device, torch.uint8)),
    }
    whole = {}
    for key, tensor in parts.items():
        gathered = [torch.empty_like(tensor) for _ in range(world.size)]
        dist.all_gather(gathered, tensor)
        out = torch.empty((total, *tensor.shape[1:]), dtype=tensor.dtype, device=tensor.device)
        for rank, part in enumerate(gathered):
            count = len(range(rank, total, world.size))
            out[rank :: world.size] = part[:count]
        whole[key] = out
    return Features(whole["values"], whole["labels"], whole["ok"].bool().cpu())


def log_extracted(split: str, features: Features, seconds: float) -> None:
    log.info(
        format_line(
            "feature_cache_built",
            split=split,
            images=int(features.ok.sum()),
            dim=int(features.values.shape[1]),
            seconds=seconds,
            images_per_sec=int(features.ok.sum()) / max(seconds, 1e-9),
        )
    )
