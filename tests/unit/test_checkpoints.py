import pytest
import torch

from image_classifier.hyperparameters import Hyperparameters
from image_classifier.training.checkpoints import foreign_reason, list_checkpoints, load_latest, run_fingerprint, save_checkpoint

CLASSES = ["cat", "dog"]


def state_of(epoch: int, **overrides) -> dict:
    hp = Hyperparameters(**overrides).model_dump()
    return {"epoch": epoch, "classes": CLASSES, "model_name": hp["model"], "hyperparameters": hp}


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


def test_a_restart_may_change_how_long_and_how_but_not_what_is_learnt():
    mine = Hyperparameters(lr=0.01).model_dump()
    assert foreign_reason(state_of(1, lr=0.01), CLASSES, mine) is None
    assert foreign_reason(state_of(1, lr=0.01, epochs=3, num_workers=0, amp="off"), CLASSES, mine) is None
    assert foreign_reason(state_of(1, lr=0.02, batch_size=64), CLASSES, mine) == "different_hyperparameters:batch_size,lr"
    assert foreign_reason(state_of(1, lr=0.01), ["cat", "cow"], mine) == "different_model_or_classes"
    assert foreign_reason(state_of(1, lr=0.01, model="resnet18"), CLASSES, mine) == "different_model_or_classes"
    legacy = {k: v for k, v in state_of(1, lr=0.01).items() if k != "hyperparameters"}
    assert foreign_reason(legacy, CLASSES, mine) is None  # written before hyperparameters were kept


def test_run_fingerprint_follows_the_defining_hyperparameters():
    base = run_fingerprint(CLASSES, Hyperparameters().model_dump())
    assert base == run_fingerprint(CLASSES, Hyperparameters(epochs=99, log_interval=1).model_dump())
    assert base != run_fingerprint(CLASSES, Hyperparameters(weight_decay=0.5).model_dump())
    assert base != run_fingerprint(["dog", "cat"], Hyperparameters().model_dump())


def test_another_runs_newer_checkpoints_are_set_aside_and_ours_resumed(tmp_path):
    """Tuning trials that share one checkpoint URI: the other trial's epochs 5 and 4 must neither be
    resumed nor, being 'newer' by name, make pruning delete this trial's own next checkpoints."""
    mine = Hyperparameters(lr=0.01).model_dump()
    save_checkpoint(state_of(2, lr=0.01), tmp_path, 2, 0)
    save_checkpoint(state_of(4, lr=0.5), tmp_path, 4, 0, keep=3)
    save_checkpoint(state_of(5, lr=0.5), tmp_path, 5, 0, keep=3)
    state, path = load_latest(tmp_path, lambda s: foreign_reason(s, CLASSES, mine))
    assert state["epoch"] == 2 and path.name == "checkpoint-0002-000000.pt"
    assert sorted(p.name for p in (tmp_path / "foreign").iterdir()) == ["checkpoint-0004-000000.pt", "checkpoint-0005-000000.pt"]
    save_checkpoint(state_of(3, lr=0.01), tmp_path, 3, 0)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["checkpoint-0003-000000.pt", "checkpoint-0002-000000.pt"]


def test_only_the_main_process_moves_foreign_checkpoints(tmp_path):
    save_checkpoint(state_of(1, lr=0.5), tmp_path, 1, 0)
    assert load_latest(tmp_path, lambda s: foreign_reason(s, CLASSES, Hyperparameters().model_dump()), set_aside=False) is None
    assert (tmp_path / "checkpoint-0001-000000.pt").exists() and not (tmp_path / "foreign").exists()


def test_a_named_job_empties_its_own_folder_once_it_succeeded(tmp_path):
    from image_classifier.training.background_writes import BackgroundWriter
    from image_classifier.training.checkpoints import RunCheckpoints

    own, other = tmp_path / "ic-tune-1-001-a", tmp_path / "ic-tune-1-002-b"
    for folder in (own, other):
        folder.mkdir()
        save_checkpoint({"epoch": 1}, folder, 1, 0)
    with BackgroundWriter() as writer:
        RunCheckpoints(own, CLASSES, {}, writer, is_main=True).finish()  # an unnamed (local) job keeps its files
        assert list_checkpoints(own)
        RunCheckpoints(own, CLASSES, {}, writer, is_main=False, remove_when_done=True).finish()  # only the main process
        assert list_checkpoints(own)
        RunCheckpoints(own, CLASSES, {}, writer, is_main=True, remove_when_done=True).finish()
    assert not own.exists() and list_checkpoints(other)  # another trial's folder is never touched
