"""deploy.data without AWS: sources (folder, zip, URL), layouts, the stratified split, the pre-flight."""

from __future__ import annotations

import functools
import http.server
import os
import threading
import zipfile
from pathlib import Path

import pytest
from PIL import Image

from deploy.data import detect_layout, main, preflight, prepare, split_counts
from image_classifier.errors import UserError


def _classes(root: Path, counts: dict[str, int], suffix: str = ".png") -> Path:
    """Small real images, a different colour per class and per image."""
    for c, (name, n) in enumerate(counts.items()):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.new("RGB", (8, 8), (40 * c % 256, 9 * i % 256, 90)).save(root / name / f"img{i:03d}{suffix}")
    return root


def _split(root: Path, counts: dict[str, int], valid: str = "valid", test: bool = True) -> Path:
    _classes(root / "train", counts)
    _classes(root / valid, {k: 2 for k in counts})
    if test:
        _classes(root / "test", {k: 2 for k in counts})
    return root


def _assignment(prepared) -> dict[str, set[str]]:
    return {ch: {p.relative_to(prepared.channels[ch]).as_posix() for p in files} for ch, files in prepared.files.items()}


# --- layout ----------------------------------------------------------------------------------


@pytest.mark.parametrize("valid", ["valid", "validation", "val"])
@pytest.mark.parametrize("wrapped", [False, True])
def test_split_layout_at_the_root_or_one_folder_down(tmp_path, valid, wrapped):
    root = _split(tmp_path / "dogImages" if wrapped else tmp_path, {"001.Affenpinscher": 3}, valid=valid)
    layout = detect_layout(tmp_path)
    assert layout.kind == "split" and layout.root == root
    assert layout.splits == {"train": root / "train", "validation": root / valid, "test": root / "test"}


def test_test_split_is_optional(tmp_path):
    _split(tmp_path, {"a": 3}, test=False)
    assert sorted(detect_layout(tmp_path).splits) == ["train", "validation"]


def test_class_folders_are_unsplit_even_when_a_class_is_called_train(tmp_path):
    _classes(tmp_path / "vehicles", {"train": 3, "plane": 3, "car": 3})
    layout = detect_layout(tmp_path)
    assert (layout.kind, layout.root) == ("unsplit", tmp_path / "vehicles")


def test_train_without_validation_is_refused(tmp_path):
    _classes(tmp_path / "train", {"a": 3, "b": 3})
    with pytest.raises(UserError, match=r"has train/ but no validation/, valid/, val/"):
        detect_layout(tmp_path)


def test_a_folder_without_classes_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("no images here")
    with pytest.raises(UserError, match="neither class folders nor train/"):
        prepare(str(tmp_path), tmp_path.parent / f"{tmp_path.name}-work")


# --- stratified split ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "valid_fraction", "test_fraction", "expected"),
    [
        (100, 0.1, 0.2, (10, 20)),
        (10, 0.1, 0.1, (1, 1)),
        (3, 0.1, 0.1, (1, 1)),
        (2, 0.1, 0.0, (1, 0)),
        (5, 0.5, 0.4, (3, 1)),
        (25, 0.1, 0.1, (3, 3)),
    ],
)
def test_split_counts(n, valid_fraction, test_fraction, expected):
    assert split_counts(n, valid_fraction, test_fraction) == expected
    assert n - sum(expected) >= 1


def test_unsplit_folders_are_split_per_class_seeded_and_linked(tmp_path):
    counts = {"cat": 50, "dog": 20, "fox": 7, "owl": 3}
    source = _classes(tmp_path / "photos", counts)

    prepared = prepare(str(source), tmp_path / "work", seed=1, valid_fraction=0.1, test_fraction=0.2)

    assert prepared.layout == "unsplit" and prepared.classes == ("cat", "dog", "fox", "owl")
    assert prepared.channels == {ch: tmp_path / "work" / "channels" / ch for ch in ("train", "validation", "test")}
    assigned = _assignment(prepared)
    for name, n in counts.items():
        n_valid, n_test = split_counts(n, 0.1, 0.2)
        got = {ch: sum(1 for rel in rels if rel.startswith(f"{name}/")) for ch, rels in assigned.items()}
        assert got == {"train": n - n_valid - n_test, "validation": n_valid, "test": n_test}, name
    every = [rel for rels in assigned.values() for rel in rels]
    assert len(every) == len(set(every)) == sum(counts.values())  # no file in two splits, none lost
    assert prepared.counts == {ch: len(rels) for ch, rels in assigned.items()}
    # the user's files stay where they were; the channels hold links to them
    linked = prepared.files["train"][0]
    original = source / linked.relative_to(prepared.channels["train"])
    assert original.is_file() and os.path.samefile(original, linked)

    again = prepare(str(source), tmp_path / "work-again", seed=1, valid_fraction=0.1, test_fraction=0.2)
    other = prepare(str(source), tmp_path / "work-other", seed=2, valid_fraction=0.1, test_fraction=0.2)
    assert _assignment(again) == assigned
    assert _assignment(other)["validation"] != assigned["validation"]


def test_rerun_into_the_same_work_dir_replaces_the_split(tmp_path):
    source = _classes(tmp_path / "photos", {"a": 20, "b": 20})
    prepare(str(source), tmp_path / "work", seed=1)
    second = prepare(str(source), tmp_path / "work", seed=2)
    assert sum(second.counts.values()) == 40  # the first split's links are gone, not added to


def test_classes_too_small_to_split_are_named(tmp_path):
    source = _classes(tmp_path / "photos", {"big": 10, "tiny": 2})
    with pytest.raises(UserError, match=r"fewer than 3 images .*'tiny': 2"):
        prepare(str(source), tmp_path / "work")
    prepared = prepare(str(source), tmp_path / "work", test_fraction=0.0)
    assert sorted(prepared.channels) == ["train", "validation"] and prepared.counts == {"train": 10, "validation": 2}


def test_work_dir_inside_the_data_is_refused(tmp_path):
    source = _classes(tmp_path / "photos", {"a": 5, "b": 5})
    with pytest.raises(UserError, match="must not lie inside --data"):
        prepare(str(source), source / "work")


# --- pre-flight ------------------------------------------------------------------------------


def test_corrupt_jpeg_is_skipped_and_reported(tmp_path):
    root = _split(tmp_path / "data", {"a": 30, "b": 30})
    good = root / "train" / "a" / "img000.png"
    corrupt = root / "train" / "a" / "broken.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff\xe0" + b"not really a jpeg" * 20)
    (root / "train" / "a" / "README.txt").write_text("ignored, as the trainer ignores it")

    prepared = prepare(str(root), tmp_path / "work")

    assert prepared.unreadable == (corrupt,)
    assert prepared.counts == {"train": 60, "validation": 4, "test": 4}
    assert corrupt not in prepared.files["train"] and good in prepared.files["train"]


def test_class_missing_from_validation_is_named(tmp_path):
    root = _split(tmp_path / "data", {"a": 3, "b": 3, "c": 3})
    for path in (root / "valid" / "b").iterdir():
        path.unlink()
    (root / "valid" / "b").rmdir()
    with pytest.raises(UserError, match=r"missing from 'validation': \['b'\]"):
        prepare(str(root), tmp_path / "work")


def test_too_many_unreadable_files_fail_naming_them(tmp_path):
    root = _split(tmp_path / "data", {"a": 28, "b": 28})  # 64 images in all
    for i in range(4):  # 6.25 % > the trainer's 5 %
        (root / "train" / "b" / f"img{i:03d}.png").write_bytes(b"\x89PNG truncated")
    with pytest.raises(UserError, match=r"4 of 64 images are unreadable .*max_bad_fraction=0.05.*train/b/img000.png"):
        prepare(str(root), tmp_path / "work")
    assert len(prepare(str(root), tmp_path / "work", max_bad_fraction=0.1).unreadable) == 4


def test_a_class_with_only_unreadable_images_is_named(tmp_path):
    root = _split(tmp_path / "data", {"a": 40, "b": 40})
    for path in (root / "test" / "b").iterdir():
        path.write_bytes(b"garbage")
    with pytest.raises(UserError, match=r"channel 'test' has classes with no readable image: \['b'\]"):
        prepare(str(root), tmp_path / "work")


def test_verdicts_match_the_trainers_own_preflight(tmp_path):
    """The trainer's drop_unreadable on the same channels keeps exactly what deploy.data keeps."""
    from image_classifier.data.discovery import index_split
    from image_classifier.hyperparameters import Hyperparameters
    from image_classifier.training.distributed import World
    from image_classifier.training.preflight import drop_unreadable

    root = _split(tmp_path / "data", {"a": 30, "b": 30})
    (root / "train" / "a" / "bad.png").write_bytes(b"\x89PNG truncated")
    channels = {"train": root / "train", "validation": root / "valid", "test": root / "test"}

    ours = preflight(channels, "split")
    indices = [index_split(name, folder) for name, folder in channels.items()]
    kept, bad = drop_unreadable(indices, Hyperparameters(), World(), workers=2)

    assert bad == len(ours.unreadable) == 1
    assert [tuple(p for p, _ in samples) for samples in kept] == [ours.files[ch] for ch in channels]


# --- zip and URL sources ---------------------------------------------------------------------


def _dog_zip(tmp_path: Path) -> Path:
    """The dog-breed zip's shape: dogImages/{train,valid,test}/<NNN.Breed>/*.jpg, plus macOS litter."""
    tree = tmp_path / "tree"
    for split, n in (("train", 4), ("valid", 2), ("test", 2)):
        _classes(tree / "dogImages" / split, {"001.Affenpinscher": n, "002.Afghan_hound": n}, suffix=".jpg")
    archive = tmp_path / "served" / "dogImages.zip"
    archive.parent.mkdir(exist_ok=True)
    with zipfile.ZipFile(archive, "w") as handle:
        for path in sorted(tree.rglob("*")):
            handle.write(path, path.relative_to(tree).as_posix())
        handle.writestr("__MACOSX/dogImages/._train", b"resource fork")
    return archive


def test_local_zip(tmp_path):
    prepared = prepare(str(_dog_zip(tmp_path)), tmp_path / "work")
    base = tmp_path / "work" / "extracted" / "dogImages"
    assert prepared.layout == "split" and prepared.classes == ("001.Affenpinscher", "002.Afghan_hound")
    assert prepared.channels == {"train": base / "train", "validation": base / "valid", "test": base / "test"}
    assert prepared.counts == {"train": 8, "validation": 4, "test": 4}


@pytest.fixture
def http_server(tmp_path):
    """A real HTTP server on 127.0.0.1 serving tmp_path/served."""
    (tmp_path / "served").mkdir(exist_ok=True)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path / "served"))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def test_zip_from_a_url_is_downloaded_once(tmp_path, http_server):
    _dog_zip(tmp_path)
    url = f"http://127.0.0.1:{http_server.server_address[1]}/dogImages.zip"

    prepared = prepare(url, tmp_path / "work")
    assert prepared.counts == {"train": 8, "validation": 4, "test": 4}
    downloads = list((tmp_path / "work" / "downloads").iterdir())
    assert [p.name.split("-", 1)[1] for p in downloads] == ["dogImages.zip"]

    http_server.shutdown()  # a re-run needs no network
    assert prepare(url, tmp_path / "work").counts == prepared.counts


def test_failed_download_names_the_url_and_status(tmp_path, http_server):
    url = f"http://127.0.0.1:{http_server.server_address[1]}/missing.zip"
    with pytest.raises(UserError, match=rf"cannot download {url}: HTTP 404"):
        prepare(url, tmp_path / "work")
    assert not any((tmp_path / "work" / "downloads").glob("*missing.zip"))


def test_zip_members_outside_the_destination_are_refused(tmp_path):
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as handle:
        handle.writestr("../escaped.png", b"x")
    with pytest.raises(UserError, match=r"outside the destination: '\.\./escaped\.png'"):
        prepare(str(archive), tmp_path / "work")
    assert not (tmp_path / "work" / "escaped.png").exists()


def test_missing_source_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        prepare(str(tmp_path / "nowhere"), tmp_path / "work")


# --- command line ----------------------------------------------------------------------------


def test_cli_prepares_and_prints_one_summary_line(tmp_path, capsys):
    source = _classes(tmp_path / "photos", {"a": 10, "b": 10})
    assert main(["--data", str(source), "--work-dir", str(tmp_path / "work"), "--seed", "3"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("event=data_ready layout=unsplit classes=2 train=16 validation=2 test=2 unreadable=0 ")
    assert f"dir_train={tmp_path / 'work' / 'channels' / 'train'}" in line


def test_cli_reports_a_user_error_in_one_line(tmp_path, capsys):
    assert main(["--data", str(tmp_path / "nowhere"), "--work-dir", str(tmp_path / "work")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: --data ") and "does not exist" in err[-1]


def test_an_empty_class_folder_is_named_before_splitting(tmp_path):
    source = _classes(tmp_path / "photos", {"a": 5, "b": 5})
    (source / "c").mkdir()
    with pytest.raises(UserError, match=r"empty classes \(no image files\): \['c'\]"):
        prepare(str(source), tmp_path / "work")
