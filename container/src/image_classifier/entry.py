"""The image's ENTRYPOINT: choose the CUDA libraries for this host's driver, then run the command.

    docker run IMAGE train     ->  python -m image_classifier.entry train
    docker run IMAGE serve     ->  python -m image_classifier.entry serve

When the image carries NVIDIA's forward-compatibility libraries and the host driver is older
than the image's CUDA needs, they go first on ``LD_LIBRARY_PATH`` (they must, before any process
loads ``libcuda``: hence here, not in ``train``). A ``event=cuda_host`` line records the decision;
``train`` and ``serve`` then refuse a GPU they cannot use (``gpu_host``). The command is exec'd, so
it stays PID 1 and receives SageMaker's SIGTERM itself.
"""

from __future__ import annotations

import os
import sys

from image_classifier.gpu_host import decide, read_host


def environment_for(library_path: str | None, environ: dict[str, str]) -> dict[str, str]:
    """``environ`` with ``library_path`` first on LD_LIBRARY_PATH (once)."""
    if not library_path:
        return environ
    current = [p for p in environ.get("LD_LIBRARY_PATH", "").split(":") if p and p != library_path]
    return {**environ, "LD_LIBRARY_PATH": ":".join([library_path, *current])}


def main(argv: list[str]) -> None:
    if not argv:
        print("usage: python -m image_classifier.entry COMMAND [ARGS...]   (e.g. train, serve)", file=sys.stderr)
        sys.exit(2)
    facts = read_host()
    decision = decide(facts)
    if decision.mode != "cpu":
        print(decision.log_line(facts), file=sys.stderr, flush=True)
    env = environment_for(decision.library_path, dict(os.environ))
    try:
        os.execvpe(argv[0], argv, env)
    except FileNotFoundError:
        print(f"entry: command not found: {argv[0]}", file=sys.stderr)
        sys.exit(127)


if __name__ == "__main__":
    main(sys.argv[1:])
