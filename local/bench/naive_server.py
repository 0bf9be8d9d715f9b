"""The baseline: the typical hand-written inference server for this task. DO NOT TUNE IT.

This is what a user would otherwise run, and what ``serve_bench`` compares ``serve`` with. It is
fixed in the repository so that nobody makes the baseline slower (or faster) to move a ratio:
any change here invalidates every published comparison. Its shape, on purpose:

- a thread-per-request HTTP server from the standard library (``ThreadingHTTPServer``);
- decoding with PIL and the classic torchvision transforms (Resize 256, CenterCrop 224,
  ToTensor, Normalize with the ImageNet statistics);
- each request runs alone through an fp32, eager, NCHW torchvision ResNet-50 under
  ``torch.no_grad()`` (no batching across requests, no warm-up, default thread settings);
- the answer is the raw logits as JSON.

    python -m local.bench.naive_server --weights model.safetensors --port 8081
"""

from __future__ import annotations

import argparse
import io
import json
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import torch
import torchvision
from PIL import Image
from safetensors.torch import load_file
from torchvision import transforms

device = "cuda" if torch.cuda.is_available() else "cpu"
preprocess = transforms.Compose(
    [
        transforms.Resize(256),
        transforms.CenterCrop(224),
        transforms.ToTensor(),
        transforms.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]),
    ]
)
model: torch.nn.Module | None = None


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path == "/ping":
            self._reply(200, {"status": "ok"})
        else:
            self._reply(404, {"error": "not found"})

    def do_POST(self) -> None:
        if self.path != "/invocations":
            self._reply(404, {"error": "not found"})
            return
        try:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            image = Image.open(io.BytesIO(body)).convert("RGB")
            batch = preprocess(image).unsqueeze(0).to(device)
            with torch.no_grad():
                logits = model(batch)  # type: ignore[misc]
            self._reply(200, {"logits": logits[0].cpu().tolist()})
        except Exception as exc:  # noqa: BLE001 - the typical handler: any failure is a 500
            self._reply(500, {"error": str(exc)})

    def _reply(self, status: int, document: dict) -> None:
        data = json.dumps(document).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args) -> None:
        pass  # an access line per request would only add noise to the benchmark's output


def main() -> None:
    global model
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", required=True, help="a torchvision ResNet-50 state dict as safetensors")
    parser.add_argument("--num-classes", type=int, default=1000)
    parser.add_argument("--port", type=int, default=8081)
    args = parser.parse_args()
    net = torchvision.models.resnet50(num_classes=args.num_classes)
    net.load_state_dict(load_file(args.weights))
    model = net.eval().to(device)
    ThreadingHTTPServer(("127.0.0.1", args.port), Handler).serve_forever()


if __name__ == "__main__":
    main()
