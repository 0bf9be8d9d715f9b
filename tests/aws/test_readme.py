"""The README's "Call the endpoint" on AWS, run as written against the emulator.

A fresh copy of the repository holds what ``--keep-endpoint`` leaves: ``deploy/runs`` naming an
endpoint that exists in the emulator (model, endpoint config, endpoint, as the deploy step
creates them), and a ``photo.jpg`` (a real test photo of the digits model). The emulator runs no
container, so each call is answered with the package's own answer for that photo, queued in
advance. Then the ``call-aws`` block runs with bash from the copy's root, with the AWS CLI of
``.venv`` on PATH, and the ``call-aws-python`` snippet with ``.venv/bin/python``. The gate in
front of the emulator keeps every InvokeEndpoint exactly as sent (tests/aws/gate.py).
"""

from __future__ import annotations

import json
import os
import subprocess

import boto3
import pytest
from PIL import Image

from deploy.state import RunState
from tests.aws.conftest import REGION, ROLE
from tests.aws.gate import Gate
from tests.aws.seeding import Answers
from tests.helpers import VENV_BIN, fresh_copy
from tests.readme import blocks, script

ENDPOINT = "ic-endpoint-readme-1"


@pytest.fixture
def copy(aws, tmp_path, digits_job, digits_data):
    """The repository as cloned, with a kept endpoint and a photo; returns (folder, the answer queued for the photo)."""
    root = fresh_copy(tmp_path / "repo", with_venv=True)
    sm = boto3.client("sagemaker", region_name=REGION)
    sm.create_model(ModelName=ENDPOINT, PrimaryContainer={"Image": "x"}, ExecutionRoleArn=ROLE)
    variant = {"VariantName": "AllTraffic", "ModelName": ENDPOINT, "InitialInstanceCount": 1, "InstanceType": "ml.m5.xlarge"}
    sm.create_endpoint_config(EndpointConfigName=ENDPOINT, ProductionVariants=[variant])
    sm.create_endpoint(EndpointName=ENDPOINT, EndpointConfigName=ENDPOINT)
    RunState(run_id="readme", endpoint=ENDPOINT).save(root / "deploy" / "runs")
    source = sorted((digits_data / "test" / "digit_5").glob("*.png"))[0]
    Image.open(source).convert("RGB").save(root / "photo.jpg", quality=95)
    answer = Answers(digits_job[0] / "model").json(root / "photo.jpg", top_k=3)
    aws.queue_endpoint_results([answer, answer])
    return root, answer


@pytest.fixture
def gate(aws):
    gate = Gate(aws.url)
    server = gate.serve()
    yield gate
    server.shutdown()


def _env(gate: Gate) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    return {
        **env,
        "PATH": f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}",
        "AWS_ENDPOINT_URL": gate.url,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": REGION,
        "AWS_MAX_ATTEMPTS": "1",
    }


def test_the_cli_block_invokes_the_runs_endpoint_with_the_photo(copy, gate):
    root, answer = copy
    block = script("call-aws")
    assert "aws sagemaker-runtime invoke-endpoint" in block and "call-aws" in blocks()
    result = subprocess.run(["bash", "-c", block], cwd=root, env=_env(gate), capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((root / "answer.json").read_text()) == json.loads(answer)
    assert result.stdout.rstrip().endswith(answer.rstrip())  # `cat answer.json`
    (sent,) = gate.invocations
    assert sent["path"] == f"/endpoints/{ENDPOINT}/invocations"
    assert sent["headers"]["content-type"] == "image/jpeg"
    assert sent["headers"]["x-amzn-sagemaker-custom-attributes"] == "top_k=3"
    assert sent["body"] == (root / "photo.jpg").read_bytes()  # the photo's bytes, as they would reach the container


def test_the_python_snippet_invokes_it_with_the_sdk(copy, gate):
    root, answer = copy
    snippet = blocks()["call-aws-python"]
    assert "Predictor(ENDPOINT" in snippet
    result = subprocess.run(
        [str(root / ".venv" / "bin" / "python"), "-c", snippet], cwd=root, env=_env(gate), capture_output=True, text=True, timeout=180
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == str(json.loads(answer))  # print() of the decoded JSON
    (sent,) = gate.invocations
    assert sent["headers"]["content-type"] == "image/jpeg" and sent["headers"]["x-amzn-sagemaker-custom-attributes"] == "top_k=3"
    assert sent["body"] == (root / "photo.jpg").read_bytes()
