"""Where a data set comes from: a folder, a zip, or a zip URL (downloaded once), as a folder to read.

Split from ``deploy.data`` (which prepares, checks and uploads what this returns).
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import logging
import re
import shutil
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from image_classifier.errors import UserError
from image_classifier.metrics import format_line
from image_classifier.progress import Progress

log = logging.getLogger(__name__)

DOWNLOAD_TIMEOUT_SECONDS = 60  # of silence on the connection, not of the whole download
DOWNLOAD_ATTEMPTS = 4
IGNORED_NAMES = ("__MACOSX",)


def _is_url(source: str) -> bool:
    return urllib.parse.urlparse(source).scheme in ("http", "https")


def download(url: str, dest_dir: Path, *, attempts: int = DOWNLOAD_ATTEMPTS) -> Path:
    """Stream ``url`` to a file in ``dest_dir`` with progress; reused when already there.

    A dropped connection is retried (``attempts`` in all, the reason logged), resuming from the bytes
    already on disk where the server takes a ``Range`` request (a 206 answer) and starting over where it
    does not. What arrives is checked before it is used: its size against ``Content-Length`` (or the
    ``Content-Range`` total), and its MD5 where the source gives one (``Content-MD5``, or an S3 ETag of a
    single-part object). A partial file (``<name>.part``) outlives an interrupted run, so the next one
    resumes it.
    """
    name = Path(urllib.parse.urlparse(url).path).name or "data.zip"
    target = dest_dir / f"{hashlib.sha256(url.encode()).hexdigest()[:12]}-{name}"
    if target.is_file():
        log.info(format_line("download_reused", url=url, file=str(target)))
        return target
    dest_dir.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".part")
    for attempt in range(1, attempts + 1):
        try:
            expected = _fetch(url, partial)
            break
        except _Retryable as exc:
            if attempt == attempts:
                raise UserError(f"cannot download {url}: {exc} (after {attempts} attempts; run again to resume)") from exc
            have = partial.stat().st_size if partial.is_file() else 0
            log.warning(format_line("download_retry", url=url, attempt=attempt + 1, reason=str(exc), resume_from=have))
            time.sleep(min(2.0**attempt, 30.0))
    _verify(url, partial, expected)
    partial.replace(target)
    log.info(format_line("downloaded", url=url, file=str(target), bytes=target.stat().st_size))
    return target


class _Retryable(Exception):
    """The connection dropped or stalled: worth another attempt."""


@dataclass(frozen=True)
class _Expected:
    size: int | None
    md5: str | None  # hex


def _fetch(url: str, partial: Path) -> _Expected:
    have = partial.stat().st_size if partial.is_file() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        with urllib.request.urlopen(request, timeout=DOWNLOAD_TIMEOUT_SECONDS) as response:
            resumed = have > 0 and response.status == 206
            expected = _expected(response.headers, have if resumed else 0)
            with open(partial, "ab" if resumed else "wb") as out, Progress("download", total=expected.size, unit="B", url=url) as progress:
                if resumed:
                    progress.start_at(have)
                    log.info(format_line("download_resumed", url=url, resume_from=have))
                while chunk := response.read(1 << 20):
                    out.write(chunk)
                    progress.update(len(chunk))
            got = partial.stat().st_size
            if expected.size is not None and got < expected.size:  # the server closed the connection early
                raise _Retryable(f"connection closed after {got} of {expected.size} bytes")
            return expected
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:  # the range starts at the end: the file is already whole
            return _Expected(have, None)
        if exc.code >= 500 or exc.code == 429:
            raise _Retryable(f"HTTP {exc.code} {exc.reason}") from exc
        raise UserError(f"cannot download {url}: HTTP {exc.code} {exc.reason}") from exc
    except (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError) as exc:
        reason = exc.reason if isinstance(exc, urllib.error.URLError) else f"{type(exc).__name__}: {exc}"
        raise _Retryable(str(reason)) from exc
    except OSError as exc:
        raise UserError(f"cannot download {url}: {type(exc).__name__}: {exc}") from exc


def _expected(headers: Any, offset: int) -> _Expected:
    """The whole object's size and MD5, from the headers of a full (200) or ranged (206) answer."""
    size = None
    if total := re.search(r"/(\d+)$", headers.get("Content-Range", "")):
        size = int(total.group(1))
    elif headers.get("Content-Length") is not None:
        size = offset + int(headers["Content-Length"])
    md5 = None
    if content_md5 := headers.get("Content-MD5"):
        md5 = base64.b64decode(content_md5).hex()
    elif (etag := headers.get("ETag", "").strip('"')) and re.fullmatch(r"[0-9a-f]{32}", etag) and headers.get("x-amz-request-id"):
        md5 = etag  # S3: the ETag of an object uploaded in one part is its MD5 (a multipart one has a "-N" suffix)
    return _Expected(size, md5)


def _verify(url: str, path: Path, expected: _Expected) -> None:
    got = path.stat().st_size
    if expected.size is not None and got != expected.size:
        path.unlink()
        raise UserError(f"download of {url} is truncated: {got} of {expected.size} bytes (removed; run again)")
    if expected.md5 is not None:
        digest = hashlib.md5(usedforsecurity=False)
        with open(path, "rb") as handle:
            while block := handle.read(1 << 20):
                digest.update(block)
        if digest.hexdigest() != expected.md5:
            path.unlink()
            raise UserError(f"download of {url} is corrupt: MD5 {digest.hexdigest()}, the source says {expected.md5} (removed; run again)")
        log.info(format_line("download_verified", url=url, md5=expected.md5))


def extract(archive: Path, dest: Path) -> Path:
    """Unpack a zip into a fresh ``dest``; members that would land outside it are refused."""
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    root = dest.resolve()
    try:
        with zipfile.ZipFile(archive) as handle:
            members = [m for m in handle.infolist() if m.filename.split("/", 1)[0] not in IGNORED_NAMES]
            for member in members:
                target = (dest / member.filename).resolve()
                if target != root and root not in target.parents:
                    raise UserError(f"refusing zip member outside the destination: {member.filename!r} in {archive}")
            with Progress("unpack", total=sum(m.file_size for m in members), unit="B", archive=archive.name) as progress:
                for member in members:
                    handle.extract(member, dest)
                    progress.update(member.file_size)
    except zipfile.BadZipFile as exc:
        raise UserError(f"{archive} is not a readable zip: {exc}") from exc
    return dest


def _local_folder(source: str, work_dir: Path) -> Path:
    folder = Path(source).expanduser()
    inside = work_dir.resolve()
    if folder.resolve() == inside or folder.resolve() in inside.parents:
        raise UserError(f"--work-dir {work_dir} must not lie inside --data {folder}: what it writes would look like classes")
    for ours in (work_dir / "channels", work_dir / "extracted"):
        if ours.resolve() == folder.resolve() or ours.resolve() in folder.resolve().parents:
            raise UserError(f"--data {folder} lies inside {ours}, which this step rewrites; copy it elsewhere first")
    return folder


def materialise(source: str, work_dir: Path) -> Path:
    """The folder to read: ``source`` itself, or the zip (local or downloaded) unpacked under ``work_dir``."""
    if _is_url(source):
        return extract(download(source, work_dir / "downloads"), work_dir / "extracted")
    path = Path(source).expanduser()
    if path.is_dir():
        return _local_folder(source, work_dir)
    if path.is_file() and zipfile.is_zipfile(path):
        return extract(path, work_dir / "extracted")
    if path.exists():
        raise UserError(f"--data {source} is neither a folder nor a zip file")
    raise UserError(f"--data {source} does not exist (give a folder, a .zip or an http(s) URL)")
