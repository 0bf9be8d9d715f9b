"""The local AWS emulator (moto in server mode on 127.0.0.1) that every tests/aws test talks to.

boto3 reaches it through ``AWS_ENDPOINT_URL``, so ``deploy/`` runs unchanged and botocore still
validates every request against the real service model. The emulator's recorder keeps every
request body, which is how the tests see what the pipeline sent.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.aws import iam_calls
from tests.aws.gate import Gate
from tests.helpers import VENV_BIN, free_port

REGION = "us-east-1"
ROLE = "arn:aws:iam::123456789012:role/SageMakerRole"
BUCKET = "ic-test-bucket"
REPOSITORY = "image-classifier"
TRUST_SAGEMAKER = {
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Allow", "Principal": {"Service": "sagemaker.amazonaws.com"}, "Action": "sts:AssumeRole"}],
}

# what the SDK and botocore print unless quieted (deploy/quiet.py): none of it may reach the user by default
SDK_CHATTER = (
    "will collect telemetry",
    "Ignoring unnecessary instance type",
    "sagemaker.config INFO",
    "Found credentials",
    "on path of deprecation",
    "Creating training-job with name",
    "No finished training job found",
)


@dataclass
class Emulator:
    url: str
    recording: Path

    def post(self, path: str, body: bytes = b"") -> bytes:
        request = urllib.request.Request(self.url + path, data=body, method="POST")
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.read()

    def reset(self) -> None:
        self.post("/moto-api/reset")
        self.post("/moto-api/recorder/reset-recording")
        self.post("/moto-api/recorder/start-recording")

    def requests(self) -> list[dict]:
        """Every request since the last reset: target operation (JSON APIs), path, lower-cased headers, decoded body."""
        with urllib.request.urlopen(self.url + "/moto-api/recorder/download-recording", timeout=30) as response:
            lines = response.read().decode().splitlines()
        out = []
        for line in lines:
            entry = json.loads(line)
            body = entry.get("body") or ""
            if entry.get("body_encoded"):
                body = base64.b64decode(body).decode(errors="replace")
            target = entry.get("headers", {}).get("X-Amz-Target", "")
            out.append(
                {
                    "operation": target.rsplit(".", 1)[-1],
                    "method": entry["method"],
                    "path": entry["url"],
                    "headers": {k.lower(): v for k, v in entry.get("headers", {}).items()},
                    "body": body,
                }
            )
        return [r for r in out if not r["path"].startswith("/moto-api/")]

    def sent(self, operation: str) -> list[dict]:
        return [json.loads(r["body"]) for r in self.requests() if r["operation"] == operation]

    def queue_endpoint_results(self, bodies: list[str]) -> None:
        """invoke_endpoint answers these, in order (the emulator runs no container)."""
        payload = {
            "account_id": "123456789012",
            "region": REGION,
            "results": [{"Body": b, "ContentType": "application/json"} for b in bodies],
        }
        self.post("/moto-api/static/sagemaker/endpoint-results", json.dumps(payload).encode())


@pytest.fixture(scope="session")
def emulator(tmp_path_factory) -> Iterator[Emulator]:
    port = free_port()
    recording = tmp_path_factory.mktemp("moto") / "recording"
    env = {**os.environ, "MOTO_RECORDER_FILEPATH": str(recording)}
    server = subprocess.Popen(
        [str(VENV_BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(url + "/moto-api/", timeout=2)
            break
        except OSError:
            if time.monotonic() > deadline or server.poll() is not None:
                server.kill()
                raise RuntimeError("moto_server did not start") from None
            time.sleep(0.2)
    try:
        yield Emulator(url, recording)
    finally:
        server.terminate()
        server.wait(timeout=10)


AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": REGION,
    "AWS_REGION": REGION,
    "AWS_MAX_ATTEMPTS": "1",
}


@pytest.fixture
def aws(emulator, monkeypatch) -> Emulator:
    """A clean emulator with its recorder on; this process and its children point at it."""
    for key, value in {**AWS_ENV, "AWS_ENDPOINT_URL": emulator.url}.items():
        monkeypatch.setenv(key, value)
    for key in ("AWS_PROFILE", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE"):
        monkeypatch.delenv(key, raising=False)
    emulator.reset()
    import boto3

    boto3.client("s3", region_name=REGION).create_bucket(Bucket=BUCKET)
    boto3.client("iam", region_name=REGION).create_role(
        RoleName=ROLE.rsplit("/", 1)[-1], AssumeRolePolicyDocument=json.dumps(TRUST_SAGEMAKER)
    )
    boto3.client("ecr", region_name=REGION).create_repository(repositoryName=REPOSITORY, imageTagMutability="IMMUTABLE")
    push_image("20261201-120000-seed")
    emulator.post("/moto-api/recorder/reset-recording")
    emulator.post("/moto-api/recorder/start-recording")
    return emulator


@pytest.fixture
def gate(aws, monkeypatch) -> Iterator[Gate]:
    """The emulator behind the gate (tests/aws/gate.py: every request checked on its way); this process
    and its children, given the environment, talk to the gate."""
    gate = Gate(aws.url)
    server = gate.serve()
    monkeypatch.setenv("AWS_ENDPOINT_URL", gate.url)
    yield gate
    server.shutdown()


def push_image(tag: str, repository: str = REPOSITORY) -> str:
    """What a ``docker push`` leaves in ECR: an image manifest under ``tag``; returns its digest."""
    import hashlib

    import boto3

    layer = hashlib.sha256(tag.encode()).hexdigest()  # a different image per tag
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "size": 1, "digest": f"sha256:{layer}"},
        "layers": [{"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip", "size": 1, "digest": f"sha256:{layer}"}],
    }
    image = boto3.client("ecr", region_name=REGION).put_image(repositoryName=repository, imageManifest=json.dumps(manifest), imageTag=tag)
    return image["image"]["imageId"]["imageDigest"]


def pinned_image(digest: str | None = None) -> str:
    """The image URI the pipeline gives jobs and models: the repository by digest (default: the newest push)."""
    import boto3

    if digest is None:
        details = boto3.client("ecr", region_name=REGION).describe_images(repositoryName=REPOSITORY)["imageDetails"]
        digest = max(details, key=lambda d: d["imagePushedAt"])["imageDigest"]
    return f"123456789012.dkr.ecr.{REGION}.amazonaws.com/{REPOSITORY}@{digest}"


def pytest_collection_modifyitems(items) -> None:
    for item in items:
        if "tests/aws/" in str(item.fspath):
            item.add_marker(pytest.mark.aws)


RECORDER = iam_calls.Recorder()


@pytest.fixture(scope="session", autouse=True)
def observed_operations() -> Iterator[iam_calls.Recorder]:
    """Every AWS call made in this session (tests/aws/test_iam.py; ``IC_OBSERVED_OPERATIONS``: a file to add them to)."""
    uninstall = RECORDER.install()
    yield RECORDER
    uninstall()
    if os.environ.get("IC_OBSERVED_OPERATIONS"):
        RECORDER.save(Path(os.environ["IC_OBSERVED_OPERATIONS"]))


def pytest_sessionfinish(session, exitstatus) -> None:
    """A call seen anywhere in the aws tier that the user's policy (deploy/iam/user-policy.json) does not grant fails the run."""
    if not RECORDER.seen or not (iam_calls.IAM / "user-policy.json").exists():
        return
    lacking = iam_calls.missing(RECORDER.seen, iam_calls.policy_actions(iam_calls.IAM / "user-policy.json"))
    if lacking:
        print("\nevent=iam_policy_lacks calls=" + ";".join(lacking))
        session.exitstatus = 1
