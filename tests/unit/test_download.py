"""Downloading a data set: progress in a log, a dropped connection resumed or restarted, the result verified."""

from __future__ import annotations

import base64
import hashlib
import http.server
import logging
import os
import threading

import pytest

from deploy import data_sources
from deploy.data_sources import download
from image_classifier import progress
from image_classifier.errors import UserError

BODY = os.urandom(3 * 2**20 + 123)


class _Server(http.server.ThreadingHTTPServer):
    ranges = True  # honour Range requests (206)
    drops = 1  # how many answers stop after a third of the body
    md5: str | None = None  # Content-MD5 to send (base64)
    seen: list[str | None]


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, *_) -> None:
        pass

    def do_GET(self) -> None:
        asked = self.headers.get("Range")
        self.server.seen.append(asked)
        start = int(asked.split("=")[1].rstrip("-")) if asked and self.server.ranges else 0
        body = BODY[start:]
        self.send_response(206 if start else 200)
        self.send_header("Content-Length", str(len(body)))
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(BODY) - 1}/{len(BODY)}")
        if self.server.md5:
            self.send_header("Content-MD5", self.server.md5)
        self.end_headers()
        if self.server.drops:
            self.server.drops -= 1
            self.wfile.write(body[: len(body) // 3])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)


@pytest.fixture
def server(monkeypatch):
    monkeypatch.setattr(data_sources.time, "sleep", lambda _: None)  # no back-off waits in a test
    monkeypatch.setattr(progress, "INTERVAL_SECONDS", 0.0)  # a progress line per chunk
    monkeypatch.setenv("IMAGE_CLASSIFIER_PROGRESS", "lines")  # what a log or CI gets
    httpd = _Server(("127.0.0.1", 0), _Handler)
    httpd.seen = []
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def _url(server: _Server) -> str:
    return f"http://127.0.0.1:{server.server_address[1]}/dogImages.zip"


def test_a_dropped_connection_resumes_where_it_stopped_with_progress_lines(tmp_path, server, caplog):
    caplog.set_level(logging.INFO)
    path = download(_url(server), tmp_path)
    assert path.read_bytes() == BODY and not list(tmp_path.glob("*.part"))
    assert server.seen[0] is None and server.seen[1] == f"bytes={len(BODY) // 3}-"  # the second asks for the rest only
    messages = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("event=download_retry ") and f"resume_from={len(BODY) // 3}" in m for m in messages), messages
    assert any(m.startswith("event=download_resumed ") for m in messages)
    lines = [m for m in messages if m.startswith("event=progress what=download ")]
    assert lines and all(" unit=B " in m and " rate=" in m and " percent=" in m for m in lines), lines
    assert any(m.startswith("event=progress_done what=download ") for m in messages)


def test_a_server_without_ranges_is_started_over(tmp_path, server):
    server.ranges = False
    assert download(_url(server), tmp_path).read_bytes() == BODY
    assert len(server.seen) == 2


def test_what_arrived_is_checked_against_the_sources_md5(tmp_path, server, caplog):
    caplog.set_level(logging.INFO)
    server.drops = 0
    server.md5 = base64.b64encode(hashlib.md5(BODY).digest()).decode()
    download(_url(server), tmp_path / "good")
    assert any(r.getMessage().startswith("event=download_verified ") for r in caplog.records)

    server.md5 = base64.b64encode(hashlib.md5(b"something else").digest()).decode()
    with pytest.raises(UserError, match=r"is corrupt: MD5 .* the source says .* \(removed; run again\)"):
        download(_url(server), tmp_path / "bad")
    assert list((tmp_path / "bad").iterdir()) == []


def test_when_attempts_run_out_the_reason_is_given_and_the_part_kept(tmp_path, server):
    server.drops = 10
    with pytest.raises(UserError, match=r"connection closed after \d+ of \d+ bytes \(after 2 attempts; run again to resume\)"):
        download(_url(server), tmp_path, attempts=2)
    part = next(tmp_path.glob("*.part"))
    assert 0 < part.stat().st_size < len(BODY)
    kept = part.stat().st_size
    server.drops = 0
    assert download(_url(server), tmp_path).read_bytes() == BODY
    assert server.seen[-1] == f"bytes={kept}-"  # the next run resumes it
