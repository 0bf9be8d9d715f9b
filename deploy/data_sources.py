"""Where a data set comes from: a folder, a zip, or a zip URL (downloaded once), as a folder to read.

Split from ``deploy.data`` (which prepares, checks and uploads what this returns).
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from pathlib import Path

from image_classifier.atomic import atomic_target
from image_classifier.errors import UserError
from image_classifier.metrics import format_line

log = logging.getLogger(__name__)

DOWNLOAD_TIMEOUT_SECONDS = 60
IGNORED_NAMES = ("__MACOSX",)


def _is_url(source: str) -> bool:
    return urllib.parse.urlparse(source).scheme in ("http", "https")


def download(url: str, dest_dir: Path) -> Path:
    """Stream ``url`` to a file in ``dest_dir`` (atomically; reused when already there)."""
    name = Path(urllib.parse.urlparse(url).path).name or "data.zip"
    target = dest_dir / f"{hashlib.sha256(url.encode()).hexdigest()[:12]}-{name}"
    if target.is_file():
        log.info(format_line("download_reused", url=url, file=str(target)))
        return target
    try:
        with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_SECONDS) as response, atomic_target(target) as tmp:
            with open(tmp, "wb") as out:
                shutil.copyfileobj(response, out, length=1 << 20)
            expected, got = response.headers.get("Content-Length"), tmp.stat().st_size
            if expected is not None and int(expected) != got:
                raise UserError(f"download of {url} is truncated: {got} of {expected} bytes")
    except urllib.error.HTTPError as exc:
        raise UserError(f"cannot download {url}: HTTP {exc.code} {exc.reason}") from exc
    except urllib.error.URLError as exc:
        raise UserError(f"cannot download {url}: {exc.reason}") from exc
    except OSError as exc:
        raise UserError(f"cannot download {url}: {type(exc).__name__}: {exc}") from exc
    log.info(format_line("downloaded", url=url, file=str(target), bytes=target.stat().st_size))
    return target


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
            handle.extractall(dest, members=members)
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
