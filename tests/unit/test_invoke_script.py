"""``local/invoke.sh`` against a real HTTP server and a test folder of thousands of files.

With ``find | sort | head -n 1`` under ``set -o pipefail`` the script died of SIGPIPE (status 141,
no message) as soon as the list of paths outgrew a pipe buffer: the README's dog test set (836
photos) hit it every time.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pytest

from tests.helpers import REPO_ROOT

FILES = 4000  # about 400 KB of paths: several pipe buffers


class _Handler(BaseHTTPRequestHandler):
    received: ClassVar[list[tuple[str, str, int]]] = []

    def do_GET(self) -> None:
        self._answer({"status": "Healthy"})

    def do_POST(self) -> None:
        length = int(self.headers["Content-Length"])
        self.rfile.read(length)
        self.received.append((self.path, self.headers["Content-Type"], length))
        self._answer({"predictions": [{"label": "digit_0", "probability": 1.0}]})

    def _answer(self, document: dict) -> None:
        body = json.dumps(document).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    _Handler.received = []
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


@pytest.fixture
def checkout(tmp_path) -> Path:
    """A copy of local/invoke.sh beside a test folder of FILES images with long names."""
    (tmp_path / "local").mkdir()
    shutil.copy(REPO_ROOT / "local" / "invoke.sh", tmp_path / "local" / "invoke.sh")
    folder = tmp_path / "local" / "opt_ml" / "input" / "data" / "test" / "a_class_with_a_long_descriptive_name"
    folder.mkdir(parents=True)
    png = (REPO_ROOT / "container" / "openapi.yaml").read_bytes()[:64]  # the script sends bytes; the server only counts them
    for i in range(FILES):
        (folder / f"photo_{FILES - i:05d}_taken_by_someone_on_a_long_holiday.png").write_bytes(png)
    return tmp_path


def _invoke(checkout: Path, *args: str) -> subprocess.CompletedProcess:
    assert shutil.which("curl"), "curl is installed by local/system_deps.sh"
    return subprocess.run(["bash", str(checkout / "local" / "invoke.sh"), *args], capture_output=True, text=True, timeout=60)


def test_without_an_image_it_sends_the_first_of_thousands(checkout, server):
    result = _invoke(checkout, "", server)
    assert result.returncode == 0, (result.returncode, result.stderr)
    assert "photo_00001_taken_by_someone_on_a_long_holiday.png)" in result.stderr  # the first in sorted order
    assert json.loads(result.stdout)["predictions"][0]["label"] == "digit_0"
    assert _Handler.received == [("/invocations", "image/png", 64)]


def test_without_a_server_it_says_so(checkout):
    result = _invoke(checkout, "", "http://127.0.0.1:9")
    assert result.returncode == 1 and "no healthy server at http://127.0.0.1:9" in result.stderr, (result.returncode, result.stderr)
