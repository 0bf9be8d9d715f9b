"""Security: nothing pickled is ever read, checksums are checked at load, oversized bodies are
refused before they are read.

- A static scan of the package (its AST) for every way Python code can unpickle: ``torch.load``
  without ``weights_only=True``, pickle/dill/joblib/marshal/shelve, ``torch.jit.load``,
  ``numpy.load(allow_pickle=True)``, ``yaml.load``, hub downloads. The scan first proves it flags
  a planted example of each.
- Behaviour: a pickle whose unpickling would run code, offered as a checkpoint, as a pretrained
  weights file and as a served model, is refused and never runs.
- Checksums: a worker refuses weights that no longer match the card (the front's start-up check
  is in ``test_serve_lifecycle.py``).
- The payload limit: a request declaring more than the limit gets a JSON 413 at once, while the
  client has sent 10 bytes of its body; a chunked body is cut off just past the limit.
"""

from __future__ import annotations

import ast
import json
import pickle
import shutil
import socket
from pathlib import Path

import pytest
import torch

from image_classifier.errors import UserError
from image_classifier.model_card import read_card
from image_classifier.modeling.weights_io import read_state_dict, sha256_of
from image_classifier.training.checkpoints import load_latest
from tests.helpers import REPO_ROOT, ServeProcess

PACKAGE = REPO_ROOT / "container" / "src" / "image_classifier"
PAYLOAD_MB = 1
FORBIDDEN_MODULES = {"pickle", "cPickle", "_pickle", "dill", "joblib", "marshal", "shelve", "cloudpickle"}


# --- the static scan ---------------------------------------------------------------------------


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return node.id if isinstance(node, ast.Name) else ""


def _keyword(call: ast.Call, name: str):
    return next((k.value.value for k in call.keywords if k.arg == name and isinstance(k.value, ast.Constant)), None)


def unsafe_loads(source: str, filename: str = "<source>") -> list[str]:
    """Every place in ``source`` that could unpickle data, as ``file:line what``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        where = f"{filename}:{getattr(node, 'lineno', 0)}"
        if isinstance(node, ast.Import | ast.ImportFrom):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            found += [f"{where} import {n}" for n in names if n.split(".")[0] in FORBIDDEN_MODULES]
        if not isinstance(node, ast.Call):
            continue
        name = _dotted(node.func)
        if name.endswith("torch.load") and _keyword(node, "weights_only") is not True:
            found.append(f"{where} torch.load without weights_only=True")
        if name.endswith(("jit.load", "hub.load", "load_state_dict_from_url", "load_url")):
            found.append(f"{where} {name}")
        if name.endswith(("np.load", "numpy.load")) and _keyword(node, "allow_pickle") is True:
            found.append(f"{where} {name}(allow_pickle=True)")
        if name.endswith("yaml.load") or name.endswith("yaml.unsafe_load"):
            found.append(f"{where} {name}")
        if name.endswith("create_model") and _keyword(node, "pretrained") is True:
            found.append(f"{where} {name}(pretrained=True) (downloads, then may unpickle)")
    return found


def test_the_scan_flags_each_planted_unsafe_load():
    planted = """
import pickle
from dill import loads
import torch, numpy as np, yaml, timm
torch.load(path)
torch.load(path, weights_only=False)
torch.jit.load(path)
torch.hub.load("repo", "model")
np.load(path, allow_pickle=True)
yaml.load(text)
timm.create_model("resnet50", pretrained=True)
torch.load(path, weights_only=True)
np.load(path)
"""
    found = unsafe_loads(planted)
    assert len(found) == 9, found
    assert not any(":12 " in f or ":13 " in f for f in found)  # the two safe calls are not flagged


def test_the_package_never_unpickles():
    files = sorted(PACKAGE.rglob("*.py"))
    assert len(files) > 30
    found = [hit for path in files for hit in unsafe_loads(path.read_text(), str(path.relative_to(REPO_ROOT)))]
    assert found == []


# --- behaviour: a pickle that would run code -----------------------------------------------------


class _RunsCode:
    def __init__(self, sentinel: Path):
        self.sentinel = sentinel

    def __reduce__(self):
        return (Path.write_text, (self.sentinel, "unpickled and ran"))


def _evil(path: Path, sentinel: Path) -> Path:
    torch.save(
        {"model": {"w": torch.zeros(2)}, "epoch": 9, "step": 0, "payload": _RunsCode(sentinel)},
        path,
        pickle_protocol=pickle.HIGHEST_PROTOCOL,
    )
    return path


def test_a_pickled_checkpoint_is_skipped_and_never_runs(tmp_path):
    sentinel = tmp_path / "ran"
    _evil(tmp_path / "checkpoint-0009-000000.pt", sentinel)
    assert load_latest(tmp_path) is None
    assert not sentinel.exists()


def test_pickled_pretrained_weights_are_refused_and_never_run(tmp_path):
    sentinel = tmp_path / "ran"
    with pytest.raises(UserError, match="cannot load weights file"):
        read_state_dict(_evil(tmp_path / "weights.pth", sentinel))
    assert not sentinel.exists()


def _artifact_copy(digits_job, tmp_path) -> Path:
    base = tmp_path / "ml"
    shutil.copytree(digits_job[0] / "model", base / "model")
    return base


def test_a_pickled_model_is_never_served(digits_job, tmp_path):
    """A card that points at a pickled weights file, with its right sha256: start-up fails, nothing runs."""
    base = _artifact_copy(digits_job, tmp_path)
    sentinel = tmp_path / "ran"
    weights = _evil(base / "model" / "model.pt", sentinel)
    card = json.loads((base / "model" / "model_card.json").read_text())
    card.update(weights_file="model.pt", weights_sha256=sha256_of(weights))
    (base / "model" / "model_card.json").write_text(json.dumps(card))
    server = ServeProcess(base, tmp_path / "tmp")
    assert server.process.wait(timeout=60) == 1
    assert "only_safetensors_weights_are_served" in server.log()
    assert not sentinel.exists()


def test_a_worker_refuses_weights_swapped_after_start_up(digits_job, tmp_path):
    from image_classifier.serving.model import LoadedModel

    base = _artifact_copy(digits_job, tmp_path)
    assert read_card(base / "model").weights_sha256 == sha256_of(base / "model" / "model.safetensors")
    data = bytearray((base / "model" / "model.safetensors").read_bytes())
    data[-1] ^= 1
    (base / "model" / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(UserError, match="does not match the sha256"):
        LoadedModel(base / "model")


# --- the payload limit ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(digits_job, tmp_path_factory):
    proc = ServeProcess(digits_job[0], tmp_path_factory.mktemp("serve-security"), SAGEMAKER_MAX_PAYLOAD_IN_MB=str(PAYLOAD_MB))
    proc.wait_ready()
    yield proc
    proc.stop()


def _read_response(sock: socket.socket, timeout: float) -> tuple[int, dict]:
    """Status and JSON body; no answer within ``timeout`` fails the test (socket.timeout)."""
    sock.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length"))
    while len(body) < length:
        body += sock.recv(65536)
    return int(head.split()[1]), json.loads(body)


@pytest.mark.slow
def test_an_oversized_body_is_refused_from_its_declared_length(server):
    limit = PAYLOAD_MB * 1024 * 1024
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(
            b"POST /invocations HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/jpeg\r\n"
            + f"Content-Length: {limit + 1}\r\n\r\n".encode()
            + b"\xff\xd8\xff\xe0" * 3  # 12 bytes of a body that would take a slow client minutes
        )
        status, body = _read_response(sock, timeout=30)  # the body never completes: a server waiting for it never answers
    assert status == 413 and "limit" in body["error"]


@pytest.mark.slow
def test_a_chunked_body_is_cut_off_just_past_the_limit(server):
    limit = PAYLOAD_MB * 1024 * 1024
    chunk = b"\0" * 65536
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(b"POST /invocations HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/png\r\nTransfer-Encoding: chunked\r\n\r\n")
        for _ in range(limit // len(chunk) + 2):  # just past the limit, and the body never ends
            sock.sendall(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
        status, body = _read_response(sock, timeout=30)  # the body never completes: a server waiting for it never answers
    assert status == 413 and "limit" in body["error"]
