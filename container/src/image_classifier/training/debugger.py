"""SageMaker Debugger adapter: switched on by its hook config, inert everywhere else.

When SageMaker passes ``debughookconfig.json`` and smdebug imports, the hook is created from it
and registered on the model and the loss; the loop switches it between TRAIN and EVAL modes.
The freeze policy is applied before registration: smdebug only puts gradient hooks on
parameters that require gradients, so a frozen backbone saves weights but no gradients.
"""

from __future__ import annotations

import logging
from pathlib import Path

from torch import nn

log = logging.getLogger(__name__)


class DebuggerHook:
    def __init__(self, hook, modes) -> None:
        self._hook, self._modes = hook, modes

    def train(self) -> None:
        self._hook.set_mode(self._modes.TRAIN)

    def eval(self) -> None:
        self._hook.set_mode(self._modes.EVAL)

    def close(self) -> None:
        self._hook.close()


def create_hook(config: Path | None, model: nn.Module, loss: nn.Module) -> DebuggerHook | None:
    if config is None:
        return None
    try:
        import smdebug.pytorch as smd
    except Exception as exc:  # noqa: BLE001 - smdebug absent or broken: the job goes on without it
        log.warning("event=debugger_unavailable reason=%s", type(exc).__name__)
        return None
    hook = smd.Hook.create_from_json_file(str(config))
    hook.register_module(model)
    hook.register_loss(loss)
    log.info("event=debugger_enabled out_dir=%s", hook.out_dir)
    return DebuggerHook(hook, smd.modes)
