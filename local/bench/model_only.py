"""The model alone, as the serving worker runs it: the ceiling ``serve`` is measured against.

    python -m local.bench.model_only --model-dir DIR --precision bf16 --graph frozen --threads 2

Loads the artifact exactly as a worker does (``LoadedModel``, the same precision and graph that
``serve`` chose in the same benchmark run), prepares one real photo, then times the worker's
forward step (``predict_tensors``: stack, forward, softmax) with no HTTP, no decoding, no JSON: at
batch 1 (p50 of ``--runs``) and at batch ``--batch`` (images/s). Prints one JSON object.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", type=Path, required=True)
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--graph", default="auto")
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--runs", type=int, default=40)
    parser.add_argument("--photo", type=Path, required=True, help="a JPEG of the benchmark")
    args = parser.parse_args()

    from PIL import Image

    from image_classifier.serving.model import LoadedModel

    model = LoadedModel(args.model_dir, args.threads, args.precision, args.graph)
    tensor = model.prepare(Image.open(io.BytesIO(args.photo.read_bytes())).convert("RGB"))
    singles = []
    for i in range(args.runs + 3):
        started = time.perf_counter()
        model.predict_tensors([tensor])
        if i >= 3:
            singles.append(time.perf_counter() - started)
    model.predict_tensors([tensor] * args.batch)  # the batch shape once, untimed
    batches = max(4, args.runs // args.batch * 2)
    started = time.perf_counter()
    for _ in range(batches):
        model.predict_tensors([tensor] * args.batch)
    seconds = time.perf_counter() - started
    print(
        json.dumps(
            {
                "p50_ms_c1": 1000 * statistics.median(singles),
                "images_per_s_c16": batches * args.batch / seconds,
                "precision": model.runner.precision,
                "graph": model.runner.graph,
            }
        )
    )


if __name__ == "__main__":
    main()
