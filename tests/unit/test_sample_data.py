"""The local data step: downloading a zip of class folders (the dog-breed layout), safely."""

from __future__ import annotations

import functools
import http.server
import threading
import zipfile

import pytest

from local.sample_data import fetch_image_zip


@pytest.fixture
def http_folder(tmp_path):
    folder = tmp_path / "www"
    folder.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield folder, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_dog_breed_layout_is_found_inside_the_zip(http_folder, tmp_path):
    folder, url = http_folder
    with zipfile.ZipFile(folder / "dogImages.zip", "w") as archive:
        for split in ("train", "valid", "test"):
            for breed in ("001.Affenpinscher", "002.Afghan_hound"):
                archive.writestr(f"dogImages/{split}/{breed}/x.jpg", b"jpeg bytes")
    root = fetch_image_zip(f"{url}/dogImages.zip", tmp_path / "out")
    assert root == tmp_path / "out" / "dogImages"
    assert sorted(p.name for p in (root / "train").iterdir()) == ["001.Affenpinscher", "002.Afghan_hound"]


def test_members_escaping_the_destination_are_refused(http_folder, tmp_path):
    folder, url = http_folder
    with zipfile.ZipFile(folder / "evil.zip", "w") as archive:
        archive.writestr("../../escaped.txt", b"x")
    with pytest.raises(SystemExit, match="outside the destination"):
        fetch_image_zip(f"{url}/evil.zip", tmp_path / "out")
    assert not (tmp_path / "escaped.txt").exists()


def test_a_zip_without_train_and_valid_is_refused(http_folder, tmp_path):
    folder, url = http_folder
    with zipfile.ZipFile(folder / "flat.zip", "w") as archive:
        archive.writestr("images/a.jpg", b"x")
    with pytest.raises(SystemExit, match="no folder with train/ and valid/"):
        fetch_image_zip(f"{url}/flat.zip", tmp_path / "out")
