"""The serving API against its OpenAPI description (``container/openapi.yaml``), with schemathesis.

schemathesis generates requests from the description (valid and invalid parameters, headers,
bodies, undeclared methods) and checks every answer: never a 5xx, only documented statuses and
content types, bodies that match their schemas, 405 with ``Allow``. Run against a single-model
server and against a multi-model endpoint (where ``/models`` is live), each with a model of ours: the
description is of our handler, not of a model with its own code/inference.py (test_serve_user_code.py).
"""

from __future__ import annotations

import re
import subprocess
import time

import pytest
import requests

from tests.helpers import REPO_ROOT, VENV_BIN, ServeProcess
from tests.reliability import FIGURES, scaled

SPEC = REPO_ROOT / "container" / "openapi.yaml"
EXAMPLES = scaled(40, 300)  # per operation
# Left out: positive_data_acceptance (a schema cannot say "a decodable image", so generated
# "valid" image bodies are random bytes that rightly get 400), negative_data_rejection (likewise
# for base64 strings), and the two authentication checks (the API has no authentication).
EXCLUDED = "positive_data_acceptance,negative_data_rejection,ignored_auth,object_level_authorization"


def _schemathesis(url: str, report) -> str:
    started = time.monotonic()
    result = subprocess.run(
        [
            str(VENV_BIN / "st"),
            "run",
            str(SPEC),
            "--url",
            url,
            "--checks",
            "all",
            "--exclude-checks",
            EXCLUDED,
            "--max-examples",
            str(EXAMPLES),
            "--generation-database",
            "none",
            "--workers",
            "2",
            "--request-timeout",
            "60",
            "--no-color",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO_ROOT,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-8000:]
    generated = re.search(r"(\d+) generated, (\d+) passed", output)
    assert generated and generated.group(1) == generated.group(2), output[-3000:]
    report[url] = {"cases": int(generated.group(1)), "seconds": round(time.monotonic() - started, 1)}
    return output


@pytest.mark.slow
def test_single_model_server_matches_its_description(digits_job, tmp_path):
    server = ServeProcess(digits_job[0], tmp_path / "serve")
    try:
        server.wait_ready()
        report: dict = {}
        _schemathesis(server.url, report)
        FIGURES["openapi_single_model"] = next(iter(report.values()))
        assert requests.get(f"{server.url}/ping", timeout=10).status_code == 200
    finally:
        assert server.stop() == 0


@pytest.mark.slow
def test_multi_model_endpoint_matches_its_description(digits_job, tmp_path):
    server = ServeProcess(digits_job[0], tmp_path / "serve", SAGEMAKER_MULTI_MODEL="true")
    try:
        server.wait_ready()
        loaded = requests.post(f"{server.url}/models", json={"model_name": "digits", "url": str(digits_job[0] / "model")}, timeout=300)
        assert loaded.status_code == 200, loaded.text
        report: dict = {}
        _schemathesis(server.url, report)
        FIGURES["openapi_multi_model"] = next(iter(report.values()))
    finally:
        assert server.stop() == 0
