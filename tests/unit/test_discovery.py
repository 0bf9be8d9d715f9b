import pytest

from image_classifier.data.discovery import check_same_classes, index_split, resolve_splits
from image_classifier.errors import UserError


def _tree(root, classes, files=1):
    for c in classes:
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(files):
            (root / c / f"{i}.png").write_bytes(b"x")
    return root


def test_separate_channels(tmp_path):
    channels = {"train": tmp_path / "a", "valid": tmp_path / "b", "test": tmp_path / "c"}
    splits = resolve_splits(channels)
    assert (splits.train, splits.validation, splits.test) == (tmp_path / "a", tmp_path / "b", tmp_path / "c")


def test_single_training_channel_with_dog_breed_layout(tmp_path):
    for split in ("train", "valid", "test"):
        (tmp_path / split).mkdir()
    splits = resolve_splits({"training": tmp_path})
    assert splits.train == tmp_path / "train" and splits.validation == tmp_path / "valid" and splits.test == tmp_path / "test"


def test_missing_channels_are_named(tmp_path):
    with pytest.raises(UserError, match="no 'train' channel"):
        resolve_splits({"foo": tmp_path})
    with pytest.raises(UserError, match="no 'validation' channel"):
        resolve_splits({"train": tmp_path})


def test_class_order_is_sorted_and_recursive(tmp_path):
    _tree(tmp_path, ["b_dog", "a_cat", "C_upper"], files=2)
    (tmp_path / "a_cat" / "nested").mkdir()
    (tmp_path / "a_cat" / "nested" / "x.jpg").write_bytes(b"x")
    (tmp_path / "a_cat" / "notes.txt").write_text("x")
    (tmp_path / "a_cat" / ".hidden.png").write_bytes(b"x")
    index = index_split("train", tmp_path)
    assert index.classes == ("C_upper", "a_cat", "b_dog")
    assert index.counts() == {"C_upper": 2, "a_cat": 3, "b_dog": 2}
    assert [p.name for p in index.ignored] == ["notes.txt"]


def test_empty_class_and_empty_channel_are_named(tmp_path):
    _tree(tmp_path / "t", ["cat", "dog"])
    (tmp_path / "t" / "emu").mkdir()
    with pytest.raises(UserError, match=r"channel 'train' has empty classes .*\['emu'\]"):
        index_split("train", tmp_path / "t")
    (tmp_path / "e").mkdir()
    with pytest.raises(UserError, match="channel 'validation' is empty"):
        index_split("validation", tmp_path / "e")


def test_class_sets_must_match(tmp_path):
    train = index_split("train", _tree(tmp_path / "t", ["cat", "dog"]))
    valid = index_split("validation", _tree(tmp_path / "v", ["cat", "emu"]))
    with pytest.raises(UserError, match=r"missing from 'validation': \['dog'\]; only in 'validation': \['emu'\]"):
        check_same_classes(train, valid)
