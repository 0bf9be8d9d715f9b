"""Checkpoint writes off the training loop: newest wins, best before checkpoint, errors surface."""

from __future__ import annotations

import threading

import pytest
import torch

from image_classifier.training.background_writes import BackgroundWriter, snapshot


def test_a_queued_write_is_replaced_by_a_newer_one_and_best_goes_first():
    started, gate = threading.Event(), threading.Event()
    done: list[str] = []
    with BackgroundWriter() as writer:
        writer.submit("checkpoint", "epoch_1", lambda: (started.set(), gate.wait(5), done.append("checkpoint 1")))
        assert started.wait(5)  # epoch 1 is being written
        writer.submit("checkpoint", "epoch_2", lambda: done.append("checkpoint 2"))  # queued behind 1 ...
        writer.submit("checkpoint", "epoch_3", lambda: done.append("checkpoint 3"))  # ... and replaced by 3
        writer.submit("best", "epoch_3", lambda: done.append("best 3"))
        gate.set()
        writer.flush()
        assert done == ["checkpoint 1", "best 3", "checkpoint 3"]
        writer.submit("checkpoint", "epoch_4", lambda: done.append("checkpoint 4"))
    assert done[-1] == "checkpoint 4"  # leaving the block waits for the last write


def test_an_unexpected_error_in_a_write_is_raised_by_flush():
    writer = BackgroundWriter()
    writer.submit("checkpoint", "epoch_1", lambda: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        writer.flush()
    writer.submit("checkpoint", "epoch_2", lambda: None)  # the thread is still there
    writer.close()


def test_snapshot_is_a_copy_later_steps_cannot_tear():
    weight = torch.ones(3)
    state = {"model": {"w": weight}, "history": [{"epoch": 1}], "step": 4, "pair": (weight, "x")}
    copy = snapshot(state)
    weight.add_(1)
    state["history"].append({"epoch": 2})
    assert copy["model"]["w"].tolist() == [1, 1, 1] and copy["pair"][0].tolist() == [1, 1, 1]
    assert copy["history"] == [{"epoch": 1}] and copy["step"] == 4 and copy["pair"][1] == "x"
