"""The README's command blocks, read by the tests that run them as written.

A block is the fenced code block right after a ``<!-- readme: NAME ... -->`` comment; its
commands are its lines with comments stripped and backslash continuations joined.
"""

from __future__ import annotations

import re

from tests.helpers import REPO_ROOT

_MARKER = re.compile(r"<!-- readme: (?P<name>[\w-]+)[^>]*-->\s*\n```\w*\n(?P<body>.*?)\n```", re.DOTALL)


def blocks() -> dict[str, str]:
    return {m.group("name"): m.group("body") for m in _MARKER.finditer((REPO_ROOT / "README.md").read_text())}


def commands(name: str) -> list[str]:
    """Each command of block ``name``: continuations joined, trailing ``# comments`` and blank lines dropped."""
    joined = blocks()[name].replace("\\\n", " ")
    out = []
    for line in joined.splitlines():
        command = re.sub(r"\s+#.*$", "", line).strip()
        if command and not command.startswith("#"):
            out.append(re.sub(r"\s+", " ", command))
    return out


def script(name: str) -> str:
    """Block ``name`` as a bash script that stops at the first failing command."""
    return "set -euo pipefail\n" + "\n".join(commands(name)) + "\n"
