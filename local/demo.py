"""`make demo`: fine-tune a pretrained classifier on real offline photos, on CPU, in minutes.

1. writes a Fashion-MNIST subset (10 classes, real product photos) into ``local/opt_ml`` in the
   SageMaker channel layout, with the EfficientNet-Lite0 ImageNet weights as the
   ``pretrained`` channel;
2. runs ``train`` exactly as SageMaker would (``SAGEMAKER_BASE_DIR=local/opt_ml``);
3. prints the test accuracy and where every artifact is;
4. starts ``serve`` on the trained model (as ``docker run IMAGE serve`` would), queries
   ``/invocations`` with a test photo through curl, prints the top-5, asks again with
   ``explain=auto`` (the heatmap's grid printed, its overlay written to
   ``local/opt_ml/output/explanation.png``) and stops the server.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from local.sample_data import BUILTIN_HYPERPARAMETERS, BUILTIN_SIZES, write_config, write_fashion

ROOT = Path(__file__).resolve().parent.parent
BASE = ROOT / "local" / "opt_ml"
WEIGHTS = ROOT / "local" / "weights" / "tf_efficientnet_lite0.safetensors"
PREPARED = ROOT / "local" / "data" / "prepared"  # deploy's data step works here (split links, downloads)

# What `make local-data DATA=...` writes for a user's own images: the offline backbone at its own
# resolution; the learning rates, warm-up, augmentation and epochs are the trainer's rule
# (image_classifier/defaults.py), chosen from the data when the job starts.
OWN_IMAGES_HYPERPARAMETERS = {
    "model": "tf_efficientnet_lite0",
    "pretrained": "true",
    "image_size": "224",
    "batch_size": "64",
    "freeze": "none",
    "log_interval": "20",
    "num_workers": "2",
}
# The demo's configuration: the same at 80 px and 5 epochs (a demo of minutes on a CPU);
# tests/contract/test_transfer_learning.py asserts it reaches >= 85 %.
DEMO_HYPERPARAMETERS = {**OWN_IMAGES_HYPERPARAMETERS, "image_size": "80", "epochs": "5"}


def clear(base: Path) -> None:
    """Empty ``base`` but for its committed README."""
    base.mkdir(parents=True, exist_ok=True)
    for path in base.iterdir():
        if path.name != "README.md":
            shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()


def prepare(base: Path = BASE, data: str | None = None, *, small: bool = False) -> Path:
    """A fresh /opt/ml-like folder: data channels, the pretrained channel, the config files.

    Offline sample photos by default: the demo's 2,000, or with ``small`` the compose image's
    built-in sample (500 photos, 3 epochs at 64 px: a training run of seconds). With ``data`` (a folder of class folders, train/ valid/
    [test/] folders, a zip or a zip URL such as the dog-breed ``dogImages.zip``), deploy's data
    step splits and checks it exactly as before an upload, and its readable images become the
    channels (hard links where the file system allows), trained at 224 px.
    """
    clear(base)
    channels_dir = base / "input" / "data"
    if data:
        from deploy.data import prepare as split_and_check

        source = data if "://" in data else str(Path(data).expanduser())
        prepared = split_and_check(source, PREPARED)
        for channel, files in prepared.files.items():
            for path in files:
                _link_or_copy(path, channels_dir / channel / path.relative_to(prepared.channels[channel]))
        channels, hyperparameters = list(prepared.files), OWN_IMAGES_HYPERPARAMETERS
        print(f"{len(prepared.classes)} classes, " + ", ".join(f"{n} {c}" for c, n in prepared.counts.items()), flush=True)
    elif small:
        write_fashion(channels_dir, **BUILTIN_SIZES)
        channels, hyperparameters = ["train", "validation", "test"], BUILTIN_HYPERPARAMETERS
    else:
        write_fashion(channels_dir, train_per_class=200, valid_per_class=40, test_per_class=100, seed=1)
        channels, hyperparameters = ["train", "validation", "test"], DEMO_HYPERPARAMETERS
    (channels_dir / "pretrained").mkdir(parents=True)
    shutil.copy(WEIGHTS, channels_dir / "pretrained" / WEIGHTS.name)
    write_config(base, hyperparameters, [*channels, "pretrained"])
    return base


def _link_or_copy(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
    except OSError:  # another file system
        shutil.copy2(source, target)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prepare-only", action="store_true", help="only write local/opt_ml (the data step before docker compose up)")
    parser.add_argument("--data", help="your images: a folder of class folders, train/ valid/ [test/] folders, a zip or a zip URL")
    args = parser.parse_args()
    if args.data and not args.prepare_only:
        parser.error("--data prepares local/opt_ml for docker compose / local mode / train: use it with --prepare-only")
    base = prepare(data=args.data, small=args.prepare_only)
    if args.prepare_only:
        print(f"wrote {base} (data channels, pretrained channel, config); next: docker compose up, or SageMaker local mode")
        return
    print(f"== data: {base / 'input' / 'data'} (Fashion-MNIST, 2,000 train / 400 validation / 1,000 test images)")
    env = {**os.environ, "SAGEMAKER_BASE_DIR": str(base), "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    started = time.perf_counter()
    print("== train (as SageMaker runs it: `train` with /opt/ml at local/opt_ml)", flush=True)
    code = subprocess.call(["train"], env=env)
    if code != 0:
        failure = base / "output" / "failure"
        print(f"training failed ({code}): {failure.read_text().strip() if failure.exists() else 'see the log above'}")
        sys.exit(code)
    final = json.loads((base / "output" / "data" / "metrics.json").read_text())["final"]
    print(f"\n== done in {time.perf_counter() - started:.0f} s")
    print(
        f"test accuracy: {final['test_acc']:.2%} (top-5 {final['test_top5_acc']:.2%}), best validation accuracy {final['best_valid_acc']:.2%}"
    )
    print(f"model artifact:   {base / 'model'} (model.safetensors + model_card.json)")
    print(f"report:           {base / 'output' / 'data' / 'training_report.html'}")
    print(f"curves, matrix:   {base / 'output' / 'data'}")
    print(f"tensorboard:      tensorboard --logdir {base / 'output' / 'tensorboard'}")
    print(f"checkpoints:      {base / 'checkpoints'}")
    serve_and_query(base, env)


def serve_and_query(base: Path, env: dict[str, str], port: int = 8080) -> None:
    sample = sorted((base / "input" / "data" / "test" / "sneaker").glob("*.png"))[0]
    print(f"\n== serve on :{port} (multi-model-server + front), then query it with {sample.name} (a sneaker)", flush=True)
    server = subprocess.Popen(["serve"], env={**env, "SAGEMAKER_BIND_TO_PORT": str(port)})
    try:
        started = time.perf_counter()
        while True:
            if server.poll() is not None:
                sys.exit(f"serve exited with {server.returncode}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.perf_counter() - started > 180:
                sys.exit("serve did not become healthy within 180 s")
            time.sleep(0.5)
        print(f"/ping 200 after {time.perf_counter() - started:.1f} s")
        command = [
            "curl",
            "-sS",
            "-X",
            "POST",
            "-H",
            "Content-Type: image/png",
            "--data-binary",
            f"@{sample}",
            f"http://127.0.0.1:{port}/invocations",
        ]
        print("$ " + " ".join(command))
        answer = json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout)
        for rank, entry in enumerate(answer["predictions"][0]["top_k"], 1):
            print(f"  {rank}. {entry['label']:<12} {entry['probability']:.3f}")
        show_explanation(command, base / "output" / "explanation.png")
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)
        print("serve stopped")


def show_explanation(command: list[str], overlay: Path) -> None:
    """The same request with ``explain=auto``: the heatmap overlay written, its grid drawn in characters."""
    command = [*command[:-1], "-H", "X-Amzn-SageMaker-Custom-Attributes: explain=auto", command[-1]]
    print("$ " + " ".join(command))
    explanation = json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout)["predictions"][0]["explanation"]
    overlay.parent.mkdir(parents=True, exist_ok=True)
    overlay.write_bytes(base64.b64decode(explanation["overlay_png"]))
    print(f"heatmap of {explanation['label']} ({explanation['method']}), 7x7 grid of the model's input (densest = most evidence):")
    shades = " .:-=+*#%@"
    for row in explanation["grid"]:
        print("  " + "".join(shades[min(len(shades) - 1, int(value * len(shades)))] * 2 for value in row))
    print(f"overlay:          {overlay}")


if __name__ == "__main__":
    main()
