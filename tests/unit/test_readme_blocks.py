"""Every command block of the README's paths is run as written by some tier; these are the links."""

from __future__ import annotations

from tests.helpers import REPO_ROOT
from tests.readme import blocks, commands

RUN_BY = {
    "quickstart": ".ci/run",
    "own-images": "tests/contract/test_readme.py",
    "compose": "tests/container/test_image.py",
    "local-mode": "tests/container/test_local_mode.py",
    "call-aws": "tests/aws/test_readme.py",
    "call-aws-python": "tests/aws/test_readme.py",
}


def test_each_block_names_the_test_that_runs_it_and_that_test_reads_it():
    assert set(blocks()) == set(RUN_BY)
    for name, runner in RUN_BY.items():
        assert f"<!-- readme: {name} ({runner}" in (REPO_ROOT / "README.md").read_text(), name
        assert f'"{name}"' in (REPO_ROOT / runner).read_text() or runner == ".ci/run", runner


def test_ci_runs_the_quick_start_exactly():
    ci = (REPO_ROOT / ".ci" / "run").read_text()
    start, end = ci.index("# --- README quick start"), ci.index("# --- end of the README quick start")
    ran = [line.strip() for line in ci[start:end].splitlines()[1:] if line.strip() and not line.strip().startswith("#")]
    assert ran == commands("quickstart") == ["make demo", "make test"]


def test_commands_are_read_as_a_reader_would():
    own = commands("own-images")
    assert own[0] == "make local-data DATA=~/photos"
    assert all("#" not in c for c in own)
