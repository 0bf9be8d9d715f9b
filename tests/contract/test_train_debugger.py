"""SageMaker Debugger: the hook config switches smdebug on; tensors are saved and read back."""

from __future__ import annotations

import json

import pytest

from tests.helpers import DIGITS_HPS, run_train


def _hook_config(base, out_dir):
    config = base / "input" / "config"
    config.mkdir(parents=True, exist_ok=True)
    (config / "debughookconfig.json").write_text(
        json.dumps(
            {
                "LocalPath": str(out_dir),
                "HookParameters": {"save_interval": "5"},
                "CollectionConfigurations": [
                    {"CollectionName": "losses"},
                    {"CollectionName": "weights"},
                    {"CollectionName": "gradients"},
                ],
            }
        )
    )


@pytest.mark.parametrize("freeze", ["none", "head"])
def test_tensors_are_saved_and_read_back(tmp_path, digits_data, freeze):
    from smdebug.trials import create_trial

    out_dir = tmp_path / "debug-output"
    _hook_config(tmp_path, out_dir)
    result = run_train(tmp_path, digits_data, {**DIGITS_HPS, "epochs": "1", "freeze": freeze})
    assert result.returncode == 0, result.stdout[-3000:]
    assert "event=debugger_enabled" in result.stdout
    trial = create_trial(str(out_dir))
    names = trial.tensor_names()
    assert any("loss" in n.lower() for n in names), names[:20]
    assert len(trial.steps()) >= 2
    gradients = [n for n in names if n.startswith("gradient/")]
    if freeze == "head":
        assert gradients and all("fc" in n for n in gradients), gradients
    else:
        assert any("layer1" in n for n in gradients)
    loss_name = next(n for n in names if "loss" in n.lower())
    value = trial.tensor(loss_name).value(trial.tensor(loss_name).steps()[0])
    assert float(value) > 0
