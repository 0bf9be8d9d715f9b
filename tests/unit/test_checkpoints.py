import pytest
import torch

from image_classifier.training.checkpoints import list_checkpoints, load_latest, save_checkpoint


def test_keeps_the_last_two_and_loads_the_newest(tmp_path):
    for epoch in range(1, 5):
        save_checkpoint({"epoch": epoch, "w": torch.full((2,), float(epoch))}, tmp_path, epoch, 0)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["checkpoint-0004-000000.pt", "checkpoint-0003-000000.pt"]
    state, path = load_latest(tmp_path)
    assert state["epoch"] == 4 and path.name == "checkpoint-0004-000000.pt"


def test_mid_epoch_checkpoints_sort_after_epoch_start(tmp_path):
    save_checkpoint({"n": 1}, tmp_path, 2, 0)
    save_checkpoint({"n": 2}, tmp_path, 2, 17)
    assert load_latest(tmp_path)[0]["n"] == 2


def test_corrupt_newest_is_skipped(tmp_path):
    save_checkpoint({"epoch": 1}, tmp_path, 1, 0)
    (tmp_path / "checkpoint-0002-000000.pt").write_bytes(b"half a checkpoint")
    state, path = load_latest(tmp_path)
    assert state["epoch"] == 1 and path.name == "checkpoint-0001-000000.pt"


def test_pickled_objects_are_refused(tmp_path):
    torch.save({"epoch": 3, "evil": object()}, tmp_path / "checkpoint-0003-000000.pt")
    save_checkpoint({"epoch": 1}, tmp_path, 1, 0)
    assert load_latest(tmp_path)[0]["epoch"] == 1


def test_failed_write_leaves_previous_checkpoint_intact(tmp_path):
    save_checkpoint({"epoch": 1, "w": torch.ones(3)}, tmp_path, 1, 0)
    with pytest.raises(Exception):  # noqa: B017 - any failure of torch.save
        save_checkpoint({"epoch": 2, "bad": lambda: None}, tmp_path, 2, 0)
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint-0001-000000.pt"]
    assert torch.equal(load_latest(tmp_path)[0]["w"], torch.ones(3))


def test_nothing_to_resume(tmp_path):
    assert load_latest(tmp_path / "missing") is None
