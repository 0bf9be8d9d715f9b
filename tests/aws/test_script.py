"""deploy/push_and_train.sh without a Docker engine: help, the configuration check, the dry run, the build flags.

The push itself, through a real engine to a real registry, is tests/aws/test_push.py.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import urllib.parse

import boto3
import pytest

from tests.aws.conftest import BUCKET, REGION, ROLE, SDK_CHATTER
from tests.helpers import REPO_ROOT, VENV_BIN

EQUALS_FORM = [f"--region={REGION}", f"--role-arn={ROLE}", f"--bucket={BUCKET}"]
PRE_FLIGHT_READS = {"GetCallerIdentity", "GetBucketLocation", "GetRole", "SimulatePrincipalPolicy", "ListServiceQuotas"}


def _script(*args: str, tmp_path, **env_extra: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("IC_")}
    env.update({"PYTHON": str(VENV_BIN / "python"), "IC_RUNS_DIR": str(tmp_path / "runs"), **env_extra})
    return subprocess.run(
        [str(REPO_ROOT / "deploy" / "push_and_train.sh"), *args], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300
    )


def test_help_needs_no_configuration(tmp_path):
    result = _script("--help", tmp_path=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "--skip-build" in result.stdout and "--platform OS/ARCH" in result.stdout  # the script's own options
    assert "--keep-endpoint" in result.stdout and "--role-arn" in result.stdout  # then the pipeline's
    assert "Field required" not in result.stdout + result.stderr


def test_dry_run_needs_no_data_no_docker_and_sends_nothing(aws, tmp_path):
    result = _script("--skip-build", "--dry-run", *EQUALS_FORM, tmp_path=tmp_path, DOCKER="/nonexistent/docker")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "dry run: not building" in result.stderr
    operations = [c["operation"] for c in json.loads(result.stdout)]
    assert operations[:2] == ["CreateHyperParameterTuningJob", "CreateTrainingJob"] and "CreateEndpoint" in operations
    assert aws.requests() == []
    said = [line for line in result.stderr.splitlines() if any(noise in line for noise in SDK_CHATTER)]
    assert said == [], said  # only our lines
    assert all(line.startswith(("event=", "push_and_train:")) for line in result.stderr.splitlines() if line.strip()), result.stderr


def test_verbose_lets_the_sdk_speak(aws, tmp_path):
    result = _script("--skip-build", "--dry-run", "--verbose", *EQUALS_FORM, tmp_path=tmp_path, DOCKER="/nonexistent/docker")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Creating training-job with name" in result.stdout + result.stderr


@pytest.mark.parametrize("form", ["--flag=value", "--flag value"])
def test_configuration_flags_reach_the_check_in_both_forms(aws, tmp_path, form):
    flags = {"--train-instance-type": "ml.g5.huge", "--max-parallel-jobs": "0", "--debugger": "sometimes", "--early-stopping": "Never"}
    args = [f"{k}={v}" for k, v in flags.items()] if "=" in form else [part for item in flags.items() for part in item]
    result = _script("--dry-run", *EQUALS_FORM, *args, tmp_path=tmp_path, DOCKER="/nonexistent/docker")
    assert result.returncode != 0
    for field in ("train_instance_type: 'ml.g5.huge' is not", "max_parallel_jobs:", "debugger:", "early_stopping:"):
        assert field in result.stderr, result.stderr[-2000:]
    assert aws.requests() == []


def test_every_scalar_field_has_a_flag():
    """Not a fixed list: the parser makes one per field, so the script's check sees every one."""
    from deploy.config import DeployConfig, _is_scalar
    from deploy.pipeline import get_args_parser

    options = {o for action in get_args_parser()._actions for o in action.option_strings}
    scalar = [name for name, field in DeployConfig.model_fields.items() if _is_scalar(field.annotation)]
    tables = {
        "autoscaling",
        "async_inference",
        "serverless",
        "model_registry",
        "rollout",
        "capture",
        "drift",
    }  # --set serverless.memory_mb=2048
    assert set(DeployConfig.model_fields) - set(scalar) == {"hyperparameters", "search", "subnets", "security_group_ids", "tags", *tables}
    assert [name for name in scalar if "--" + name.replace("_", "-") not in options] == []


def test_the_image_goes_to_the_region_the_jobs_run_in(aws, tmp_path):
    """deploy.ecr gets the same arguments as the pipeline, pipeline-only ones included, in either form."""
    args = ["repository", "--region=eu-west-1", f"--role-arn={ROLE}", "--bucket", BUCKET, "--data", "/x.zip", "--yes", "--with=mme"]
    result = subprocess.run(
        [str(VENV_BIN / "python"), "-m", "deploy.ecr", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert re.match(r"^123456789012\.dkr\.ecr\.eu-west-1\.amazonaws\.com/image-classifier:\d{8}-\d{6}-[0-9a-f]+$", result.stdout.strip())
    boto3.client("ecr", region_name="eu-west-1").describe_repositories(repositoryNames=["image-classifier"])


@pytest.mark.skipif(
    shutil.which("docker") is None, reason="the docker client (no engine needed) is installed by local/system_deps.sh --test"
)
def test_the_build_asks_docker_for_the_platform(aws, tmp_path):
    """The real docker client, no engine: it accepts the flags, then fails to connect; nothing reaches AWS."""
    engine_less = {"DOCKER_HOST": "unix:///nonexistent/docker.sock", "DOCKER_BUILDKIT": "0"}
    default = _script(*EQUALS_FORM, tmp_path=tmp_path, **engine_less)
    assert "building image-classifier:local for linux/amd64 (docker build)" in default.stderr  # the classic builder: Docker v2
    asked = _script("--dry-run", "--build", "--platform=linux/arm64", *EQUALS_FORM, tmp_path=tmp_path, **engine_less)
    assert "building image-classifier:local for linux/arm64" in asked.stderr
    for result in (default, asked):
        assert result.returncode != 0 and "Cannot connect to the Docker daemon" in result.stderr, result.stderr[-2000:]
        assert "unknown flag" not in result.stderr
    # before building, only the pre-flight's reads reached AWS (a dry run sends nothing at all)
    assert "check=docker status=warning detail='the Docker daemon does not answer" in default.stderr + default.stdout
    assert {_operation(r) for r in aws.requests()} == PRE_FLIGHT_READS


@pytest.mark.skipif(
    shutil.which("docker") is None, reason="the docker client (no engine needed) is installed by local/system_deps.sh --test"
)
def test_a_gpu_transform_builds_with_the_compatibility_libraries_and_other_runs_without(aws, tmp_path):
    engine_less = {"DOCKER_HOST": "unix:///nonexistent/docker.sock", "DOCKER_BUILDKIT": "0"}
    gpu = _script("--dry-run", "--build", "--transform-instance-type=ml.g4dn.xlarge", *EQUALS_FORM, tmp_path=tmp_path, **engine_less)
    assert "is a GPU; SageMaker's batch transform hosts run driver 470 or 535" not in gpu.stderr  # not refused: this build carries them
    assert (
        "GPU batch transform: building with NVIDIA's CUDA forward-compatibility libraries "
        "(CUDA_COMPAT_IMAGE=nvidia/cuda:13.0.2-base-ubuntu24.04)" in gpu.stderr
    ), gpu.stderr[-2000:]
    cpu = _script("--dry-run", "--build", *EQUALS_FORM, tmp_path=tmp_path, **engine_less)
    assert "building image-classifier:local for linux/amd64" in cpu.stderr and "CUDA_COMPAT_IMAGE" not in cpu.stderr
    for result in (gpu, cpu):
        assert result.returncode != 0 and "Cannot connect to the Docker daemon" in result.stderr, result.stderr[-2000:]


def _operation(request: dict) -> str:
    if request["operation"]:  # JSON APIs name it in a header
        return request["operation"]
    if request["path"].endswith("?location"):
        return "GetBucketLocation"
    return dict(urllib.parse.parse_qsl(request["body"])).get("Action", f"{request['method']} {request['path']}")
