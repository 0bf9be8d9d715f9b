import re

from image_classifier.metrics import OBJECTIVE_METRIC, format_line, metric_definitions, parse_line


def test_every_metric_is_defined_once():
    names = [d["Name"] for d in metric_definitions()]
    assert len(names) == len(set(names)) and OBJECTIVE_METRIC in names


def test_regexes_read_what_format_line_prints():
    line = "2026-01-01 INFO x " + format_line(
        "epoch", epoch=2, train_loss=0.5, train_acc=0.75, valid_loss=1.25e-5, valid_acc=0.875, lr=3e-4, images_per_sec=120.5
    )
    assert parse_line(line) == {
        "train_loss": 0.5,
        "train_acc": 0.75,
        "valid_loss": 1.25e-5,
        "valid_acc": 0.875,
        "lr": 3e-4,
        "images_per_sec": 120.5,
    }


def test_prefixed_names_do_not_match_shorter_metrics():
    parsed = parse_line(format_line("final", best_valid_acc=0.9, test_acc=0.8, test_top5_acc=0.99))
    assert "valid_acc" not in parsed and parsed["best_valid_acc"] == 0.9
    assert parsed["test_acc"] == 0.8 and parsed["test_top5_acc"] == 0.99


def test_regexes_use_no_lookbehind():
    for definition in metric_definitions():
        assert "(?<" not in definition["Regex"]
        re.compile(definition["Regex"])


def test_the_objective_is_the_best_epoch_so_far_and_valid_acc_stays_the_epochs_own():
    """SageMaker ranks a trial by the objective's last value: the best epoch's, the one the job keeps."""
    assert OBJECTIVE_METRIC == "best_valid_acc"
    parsed = parse_line(format_line("epoch", epoch=4, valid_acc=0.81, best_valid_acc=0.86, lr=1e-3))
    assert parsed["valid_acc"] == 0.81 and parsed[OBJECTIVE_METRIC] == 0.86
