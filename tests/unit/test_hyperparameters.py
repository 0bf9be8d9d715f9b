import pytest

from image_classifier.errors import UserError
from image_classifier.hyperparameters import Hyperparameters


def test_strings_become_typed_values():
    hp = Hyperparameters.from_strings({"epochs": "3", "lr": "0.01", "pretrained": "False", "image_size": "96", "freeze": "last:2"})
    assert hp.epochs == 3 and hp.lr == 0.01 and hp.pretrained is False and hp.image_size == 96
    assert hp.trainable_stages == 2


def test_json_encoded_strings_from_the_sdk_are_unquoted():
    assert Hyperparameters.from_strings({"model": '"resnet50"', "epochs": "2"}).model == "resnet50"


def test_sagemaker_injected_keys_are_ignored():
    hp = Hyperparameters.from_strings(
        {"sagemaker_program": "x", "_tuning_objective_metric": "valid_acc", "sagemaker_region": '"us-east-1"'}
    )
    assert hp == Hyperparameters()


def test_dashes_are_accepted():
    assert Hyperparameters.from_strings({"batch-size": "8"}).batch_size == 8


@pytest.mark.parametrize(
    ("raw", "named"),
    [
        ({"epochs": "three"}, "epochs='three'"),
        ({"lr": "-1"}, "lr='-1'"),
        ({"optimizer": "adam"}, "optimizer='adam'"),
        ({"freeze": "some"}, "freeze='some'"),
        ({"learning_rate": "0.1"}, "unknown hyperparameter 'learning_rate'"),
    ],
)
def test_bad_values_fail_naming_them(raw, named):
    with pytest.raises(UserError, match=named.replace("(", r"\(")) as info:
        Hyperparameters.from_strings(raw)
    assert "\n" not in str(info.value)


def test_every_problem_is_reported_at_once():
    with pytest.raises(UserError) as info:
        Hyperparameters.from_strings({"epochs": "x", "nope": "1"})
    assert "epochs" in str(info.value) and "nope" in str(info.value)


def test_freeze_policies():
    assert Hyperparameters(freeze="none").trainable_stages is None
    assert Hyperparameters(freeze="head").trainable_stages == 0


def test_other_underscore_keys_are_refused_with_the_reason():
    with pytest.raises(UserError, match=r"'_lr'.*SageMaker's own \(a typo for 'lr'\?\)") as info:
        Hyperparameters.from_strings({"_lr": "0.1", "epochs": "x", "sagemaker_new_sdk_key": "1"})
    assert "epochs='x'" in str(info.value)  # reported with the other problems, in one line
    assert "sagemaker_new_sdk_key" not in str(info.value)


def test_the_train_flags_are_the_hyperparameters_grouped_by_section():
    from image_classifier.hyperparameters import SECTIONS
    from image_classifier.training.launcher import get_args_parser

    parser = get_args_parser()
    groups = {g.title: [a.dest for a in g._group_actions] for g in parser._action_groups if g.title in {s.title() for s in SECTIONS}}
    assert list(groups) == ["model", "optimisation", "data", "speed", "observability"]
    assert [name for names in groups.values() for name in names] == list(Hyperparameters.model_fields)
    assert "lr" in groups["optimisation"] and "feature_cache" in groups["speed"]
    given = vars(parser.parse_args(["--batch-size", "8", "--lr", "0.5"]))
    assert given == {"batch_size": "8", "lr": "0.5"}  # only what was given overrides the JSON
