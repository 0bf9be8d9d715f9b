"""The reliability figures of the run (fuzz, load, faults, resume), printed at the end."""

from __future__ import annotations

import json

from tests.reliability import FIGURES


def pytest_terminal_summary(terminalreporter) -> None:
    if FIGURES:
        terminalreporter.section("reliability")
        for name, figures in FIGURES.items():
            terminalreporter.write_line(f"reliability name={name} {json.dumps(figures)}")
