"""Loaded by every Python process of a script-mode job (this folder leads its PYTHONPATH).

It records the script's uncaught exception as one line, ``Type: message``, in the file named by
``IMAGE_CLASSIFIER_SCRIPT_ERROR_FILE``, then lets Python print the traceback as usual. The failure
file is built from that line (``training/script_runner.py``): the toolkit's own text is cut wherever
the script's stderr happened to arrive in two reads. The first process to fail writes it (under
torchrun, the rank that raised; the launcher's own error comes later and is not kept).

Then the next ``sitecustomize`` on the path, if the user's environment has one, runs as it would have.
"""

import os
import sys


def _install(path: str) -> None:
    previous = sys.excepthook

    def record(kind, value, tb):
        try:
            name = kind.__qualname__ if kind.__module__ in ("builtins", "__main__") else f"{kind.__module__}.{kind.__qualname__}"
            line = " ".join(f"{name}: {value}".split()) if str(value) else name
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)  # the first failing process only
            with os.fdopen(fd, "w") as out:
                out.write(line[:1000])
        except Exception:  # noqa: BLE001 - never stand between the script and its own traceback
            pass
        previous(kind, value, tb)

    sys.excepthook = record


def _chain() -> None:
    import importlib.machinery
    import importlib.util

    here = os.path.dirname(os.path.abspath(__file__))
    rest = [p for p in sys.path if os.path.abspath(p or os.curdir) != here]
    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", rest)
    if spec is not None and spec.loader is not None:
        module = importlib.util.module_from_spec(spec)
        sys.modules["sitecustomize"] = module
        spec.loader.exec_module(module)


if os.environ.get("IMAGE_CLASSIFIER_SCRIPT_ERROR_FILE"):
    _install(os.environ["IMAGE_CLASSIFIER_SCRIPT_ERROR_FILE"])
_chain()
