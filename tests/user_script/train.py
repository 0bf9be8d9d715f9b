"""A user's own training script, as the SDK's ``entry_point`` runs it in our image (script mode).

A nearest-centroid classifier over 8x8 grey pixels, written as a torch ``nn.Linear`` (logit of class
k = x.c_k - |c_k|^2 / 2): real training data, real weights, seconds on a CPU. It reads what
sagemaker-training gives every script: the hyperparameters as flags and in ``SM_HPS``, the channel in
``SM_CHANNEL_TRAIN``, the model folder in ``SM_MODEL_DIR``. Under torchrun (``torch_distributed``) each
rank reads its share of the images and the class sums are all-reduced; rank 0 writes the model.
"""

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from PIL import Image

SIDE = 8


def pixels(path: Path) -> np.ndarray | None:
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("L").resize((SIDE, SIDE)), dtype=np.float32).ravel() / 255
    except Exception:  # noqa: BLE001 - the digits data plants unreadable files; a user script skips them
        return None


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--greeting", default="none")  # a hyperparameter, as a flag
    parser.add_argument("--then", choices=("stop", "fail", "wait_for_sigterm"), default="stop")  # what the tests ask
    parser.add_argument("--model-dir", default=os.environ.get("SM_MODEL_DIR"))
    args = parser.parse_args()

    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if world > 1:
        dist.init_process_group("gloo")
    train = Path(os.environ["SM_CHANNEL_TRAIN"])
    classes = sorted(p.name for p in train.iterdir() if p.is_dir())
    files = sorted((c, f) for c, name in enumerate(classes) for f in (train / name).iterdir())[rank::world]
    sums, counts = torch.zeros(len(classes), SIDE * SIDE), torch.zeros(len(classes))
    for label, path in files:
        if (x := pixels(path)) is not None:
            sums[label] += torch.from_numpy(x)
            counts[label] += 1
    if world > 1:
        dist.all_reduce(sums)
        dist.all_reduce(counts)
    print(f"user_script rank={rank} world_size={world} images={int(counts.sum())} greeting={args.greeting}", flush=True)
    if rank == 0:
        centroids = sums / counts[:, None]
        layer = torch.nn.Linear(SIDE * SIDE, len(classes))
        layer.weight.data, layer.bias.data = centroids, -(centroids**2).sum(1) / 2
        out = Path(args.model_dir)
        out.mkdir(parents=True, exist_ok=True)
        torch.save(layer.state_dict(), out / "model.pt")
        names = ("SM_NUM_GPUS", "SM_CHANNEL_TRAIN", "SM_MODEL_DIR", "SM_STUDIO_LOCAL_MODE")
        seen = {"hps": json.loads(os.environ["SM_HPS"]), "env": {n: os.environ.get(n) for n in names}, "world_size": world}
        (out / "classes.json").write_text(json.dumps(classes))
        (out / "received.json").write_text(json.dumps(seen))
    if world > 1:
        dist.destroy_process_group()
    if args.then == "fail":
        raise ValueError("the user script was asked to fail")
    if args.then == "wait_for_sigterm":  # a long job that saves a checkpoint when SageMaker stops it

        def save_and_stop(_signum, _frame):
            (Path(args.model_dir) / "checkpoint-on-sigterm").write_text("saved")
            sys.exit(0)

        signal.signal(signal.SIGTERM, save_and_stop)
        print("user_script waiting", flush=True)
        time.sleep(60)


if __name__ == "__main__":
    main()
