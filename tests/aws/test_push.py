"""deploy/push_and_train.sh pushes through a real Docker engine to a real registry.

ECR itself is the emulator (repository, authorization token); the image goes to Debian's
``docker-registry`` on 127.0.0.1 (``registry`` in the config), and is pulled back to prove it.
A small image stands in for ours: the push path is the same for 7 GB.
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import tarfile
import time
import urllib.request
from pathlib import Path

import boto3
import pytest

from tests.aws.conftest import BUCKET, REGION, ROLE
from tests.helpers import REPO_ROOT, VENV_BIN, free_port

pytestmark = pytest.mark.container


@pytest.fixture
def registry(tmp_path):
    port = free_port()
    config = tmp_path / "registry.yml"
    config.write_text(
        f"version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {tmp_path / 'store'}\nhttp:\n  addr: 127.0.0.1:{port}\n"
    )
    process = subprocess.Popen(["docker-registry", "serve", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            urllib.request.urlopen(url + "/v2/", timeout=2)
            break
        except OSError:
            if time.monotonic() > deadline or process.poll() is not None:
                process.kill()
                raise AssertionError("docker-registry did not start (.ci/run installs it via local/system_deps.sh --test)") from None
            time.sleep(0.2)
    yield f"127.0.0.1:{port}"
    process.terminate()
    process.wait(timeout=10)


@pytest.fixture
def small_tar(tmp_path) -> Path:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        data = b"a small stand-in for the image-classifier image\n"
        info = tarfile.TarInfo("hello.txt")
        info.size = len(data)
        archive.addfile(info, io.BytesIO(data))
    path = tmp_path / "small.tar"
    path.write_bytes(buffer.getvalue())
    return path


@pytest.fixture
def small_image(engine, small_tar) -> str:
    engine.docker("import", str(small_tar), "ic-push-test:local")
    return "ic-push-test:local"


def _script(engine, *args: str, env_extra: dict[str, str]) -> subprocess.CompletedProcess:
    env = {**os.environ, **engine.env, "PYTHON": str(VENV_BIN / "python"), **env_extra}
    return subprocess.run(
        [str(REPO_ROOT / "deploy" / "push_and_train.sh"), *args], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300
    )


def _manifest_digest(registry: str, tag: str) -> str:
    request = urllib.request.Request(
        f"http://{registry}/v2/image-classifier/manifests/{tag}", headers={"Accept": "application/vnd.docker.distribution.manifest.v2+json"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.headers["Docker-Content-Digest"]


def test_push_creates_repository_logs_in_and_pushes(aws, engine, registry, small_image, tmp_path):
    boto3.client("ecr", region_name=REGION).delete_repository(repositoryName="image-classifier", force=True)  # a first push
    config = {"IC_REGION": REGION, "IC_ROLE_ARN": ROLE, "IC_BUCKET": BUCKET, "IC_REGISTRY": registry, "IC_RUNS_DIR": str(tmp_path)}
    result = _script(engine, "--skip-build", "--local-image", small_image, "--push-only", "--image-tag", "t1", env_extra=config)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"pushing {registry}/image-classifier:t1" in result.stderr
    # what the pipeline is given: the digest the registry holds for the push, never the tag
    assert f"pushed {registry}/image-classifier@{_manifest_digest(registry, 't1')}" in result.stderr
    # read back by that digest: the image as pushed here is a Docker v2 manifest, which SageMaker pulls
    assert f"event=manifest_ok image={registry}/image-classifier@{_manifest_digest(registry, 't1')}" in result.stderr
    assert "media_type=application/vnd.docker.distribution.manifest.v2+json" in result.stderr

    with urllib.request.urlopen(f"http://{registry}/v2/image-classifier/tags/list", timeout=10) as response:
        assert json.loads(response.read())["tags"] == ["t1"]
    repository = boto3.client("ecr", region_name=REGION).describe_repositories(repositoryNames=["image-classifier"])["repositories"][0]
    assert repository["imageScanningConfiguration"] == {"scanOnPush": True}
    operations = [r["operation"] for r in aws.requests()]
    assert "CreateRepository" in operations and "GetAuthorizationToken" in operations

    # the pushed image pulls back intact
    engine.docker("rmi", f"{registry}/image-classifier:t1")
    engine.docker("pull", f"{registry}/image-classifier:t1")
    content = engine.docker("create", f"{registry}/image-classifier:t1", "x").stdout.strip()
    copied = engine.docker("cp", f"{content}:/hello.txt", "-").stdout
    engine.docker("rm", content)
    assert "a small stand-in" in copied

    # a second push reuses the repository (describe, no second create), under a tag of its own by default
    aws.post("/moto-api/recorder/reset-recording")
    again = _script(engine, "--skip-build", "--local-image", small_image, "--push-only", env_extra=config)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "CreateRepository" not in [r["operation"] for r in aws.requests()]
    with urllib.request.urlopen(f"http://{registry}/v2/image-classifier/tags/list", timeout=10) as response:
        tags = json.loads(response.read())["tags"]
    (build,) = set(tags) - {"t1"}
    assert re.match(r"^\d{8}-\d{6}-[0-9a-f]{7,}$", build), build  # UTC time and git revision
    repository = boto3.client("ecr", region_name=REGION).describe_repositories(repositoryNames=["image-classifier"])["repositories"][0]
    assert repository["imageTagMutability"] == "IMMUTABLE"


def test_the_pre_flight_reads_the_engines_platform(engine, monkeypatch):
    from deploy import preflight

    for key, value in engine.env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("DOCKER", raising=False)
    assert preflight.docker().line() == "check=docker status=ok detail='platform=linux/amd64'"


def test_bad_configuration_stops_before_docker_or_aws(aws, engine, tmp_path):
    config = {"IC_REGION": REGION, "IC_ROLE_ARN": "not-an-arn", "IC_BUCKET": BUCKET, "IC_RUNS_DIR": str(tmp_path)}
    result = _script(engine, "--skip-build", "--local-image", "nothing:here", env_extra=config)
    assert result.returncode != 0
    assert "role_arn: 'not-an-arn' is not an IAM role ARN" in result.stderr
    assert "no local image" not in result.stderr  # stopped before looking at Docker
    assert aws.requests() == []


def test_skip_build_refuses_an_image_sagemaker_cannot_run(aws, engine, tmp_path):
    """An image built for ARM (as on an ARM laptop without --platform): refused before anything is pushed."""
    context = tmp_path / "context"
    context.mkdir()
    (context / "hello.txt").write_text("arm64\n")
    (context / "Dockerfile").write_text("FROM scratch\nCOPY hello.txt /\n")  # no RUN: builds for any platform without emulation
    engine.docker("build", "--platform", "linux/arm64", "-t", "ic-push-test:arm64", str(context))
    config = {"IC_REGION": REGION, "IC_ROLE_ARN": ROLE, "IC_BUCKET": BUCKET, "IC_RUNS_DIR": str(tmp_path)}
    result = _script(engine, "--skip-build", "--local-image", "ic-push-test:arm64", "--push-only", env_extra=config)
    assert result.returncode != 0
    assert "ic-push-test:arm64 is linux/arm64; SageMaker runs linux/amd64 images" in result.stderr, result.stderr[-2000:]
    assert aws.requests() == []
