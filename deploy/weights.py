"""Fetch a backbone's ImageNet weights once, on a machine with internet, as one safetensors file.

A job with network isolation (and the image itself, which sets ``HF_HUB_OFFLINE=1``) cannot
download weights, and the trainer never falls back to random init. So this step runs on the
user's machine: it builds the model with its ImageNet weights through timm (or torchvision for
``torchvision/<name>``) and writes ``OUT/<model>.safetensors`` (``/`` written as ``_``), the one
name the trainer looks for in the ``pretrained`` channel and in ``/opt/pretrained``. Then either

- upload the folder as the ``pretrained`` channel: it holds just that file, so it works as is;
- or bake it into the image: ``PRETRAINED_DIR`` is a folder of the build context, copied to
  ``/opt/pretrained``::

    python -m deploy.weights --model resnet50 --out docker/pretrained
    docker build --build-arg PRETRAINED_DIR=docker/pretrained -t image-classifier .

The file is checked before it is kept: every tensor name and shape equals those of the bare
architecture (``build_architecture``), and the trainer's own lookup (``find_pretrained`` with the
folder as the ``pretrained`` channel, then ``load_backbone_weights``) finds and accepts it.
Logs go to stderr; stdout is the path of the file.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from image_classifier.atomic import atomic_target
from image_classifier.errors import UserError
from image_classifier.metrics import format_line
from image_classifier.modeling.factory import TORCHVISION_PREFIX, build_architecture, is_torchvision, load_backbone_weights
from image_classifier.modeling.pretrained import find_pretrained
from image_classifier.modeling.weights_io import safe_name, sha256_of

log = logging.getLogger(__name__)


def _timm_pretrained(model_name: str, architecture: nn.Module) -> tuple[nn.Module, str]:
    import timm

    cfg = getattr(architecture, "pretrained_cfg", None) or {}
    origin = cfg.get("hf_hub_id") or cfg.get("url") or cfg.get("file")
    if not origin:
        raise UserError(f"timm has no pretrained weights for {model_name!r} (its pretrained_cfg names no hub id, url or file)")
    try:
        return timm.create_model(model_name, pretrained=True), str(origin)
    except Exception as exc:
        raise UserError(f"cannot fetch the ImageNet weights of {model_name!r} from {origin}: {_short(exc)}{_hub_hint()}") from exc


def _torchvision_pretrained(model_name: str) -> tuple[nn.Module, str]:
    import torchvision

    name = model_name[len(TORCHVISION_PREFIX) :]
    try:
        weights = torchvision.models.get_model_weights(name).DEFAULT
    except (ValueError, KeyError, AttributeError) as exc:
        raise UserError(f"torchvision has no pretrained weights for {model_name!r}: {_short(exc)}") from exc
    try:
        return torchvision.models.get_model(name, weights="DEFAULT"), weights.url
    except Exception as exc:
        cache = Path(torch.hub.get_dir()) / "checkpoints"
        raise UserError(f"cannot fetch the ImageNet weights of {model_name!r} from {weights.url} (cache {cache}): {_short(exc)}") from exc


def _short(exc: BaseException) -> str:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {first[:300]}"


def _hub_hint() -> str:
    from huggingface_hub import constants

    offline = " (HF_HUB_OFFLINE is set: only the local cache is read)" if constants.is_offline_mode() else ""
    return f"; Hugging Face cache: {constants.HF_HUB_CACHE}{offline}"


def pretrained_state(model_name: str, architecture: nn.Module) -> tuple[dict[str, torch.Tensor], str]:
    """Every tensor of the pretrained model (contiguous copies, CPU) and where the weights came from.

    Copies, because safetensors refuses tensors that share storage (tied weights) and its
    ``save_model`` would drop the duplicate names: here every name is kept.
    """
    model, origin = _torchvision_pretrained(model_name) if is_torchvision(model_name) else _timm_pretrained(model_name, architecture)
    state = {key: value.detach().to("cpu").contiguous().clone() for key, value in model.state_dict().items()}
    return state, origin


def check_matches(model_name: str, architecture: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Every name and shape of ``build_architecture(model_name)``, nothing more, nothing less."""
    expected = architecture.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}" for k, v in expected.items() if k in state and state[k].shape != v.shape]
    if missing or unexpected or wrong:
        raise UserError(
            f"weights for {model_name!r} do not match its architecture: missing {len(missing)} {missing[:3]}, "
            f"unexpected {len(unexpected)} {unexpected[:3]}, wrong shape {len(wrong)} {wrong[:3]}"
        )


def fetch_weights(model_name: str, out_dir: Path) -> Path:
    """Write ``out_dir/<safe_name(model_name)>.safetensors`` with the model's ImageNet weights; return it.

    Written atomically and checked before the rename, so a failed fetch or check leaves any
    earlier file untouched.
    """
    architecture = build_architecture(model_name)
    state, origin = pretrained_state(model_name, architecture)
    target = Path(out_dir) / f"{safe_name(model_name)}.safetensors"
    with atomic_target(target) as tmp:
        save_file(state, str(tmp), metadata={"model": model_name, "origin": origin})
        written = load_file(str(tmp))  # what is on disk, not what was in memory
        check_matches(model_name, architecture, written)
        load_backbone_weights(architecture, written, f"fetched:{tmp.name}")  # the trainer's check
    found = find_pretrained(model_name, architecture, target.parent)
    if found.kind != "channel" or found.path != target:
        raise UserError(f"{target.parent} is not usable as the 'pretrained' channel as is: the trainer would read {found.describe()}")
    log.info(
        format_line("weights_ready", model=model_name, file=str(target), sha256=sha256_of(target), tensors=len(written), origin=origin)
    )
    return target


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m deploy.weights", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="resnet50", help="timm name, or torchvision/<name> (default: resnet50)")
    parser.add_argument("--out", type=Path, required=True, help="folder to write <model>.safetensors into")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        path = fetch_weights(args.model, args.out)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
