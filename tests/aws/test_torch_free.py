"""deploy/ runs on a machine without torch, and the SageMaker SDK's own defaults (organisation tags, KMS, VPC) still apply.

Only deploy/weights.py needs torch (it converts weights); the pipeline imports it when a weights
file has to be fetched, never before. torch, torchvision and timm are blocked in the subprocess
(``sys.modules[name] = None`` makes every import of them fail).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.aws.conftest import BUCKET, REGION, ROLE
from tests.helpers import REPO_ROOT

GOOD = ["--region", REGION, "--role-arn", ROLE, "--bucket", BUCKET]
BLOCKED = "import sys\nfor name in ('torch', 'torchvision', 'timm'): sys.modules[name] = None\n"
RUN_PIPELINE = (
    BLOCKED + "import runpy\nsys.argv = ['deploy.pipeline', *sys.argv[1:]]\nrunpy.run_module('deploy.pipeline', run_name='__main__')\n"
)
ORG_KEY = "arn:aws:kms:us-east-1:123456789012:key/0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"


def _python(code: str, *args: str, env_extra: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, **(env_extra or {})}
    return subprocess.run([sys.executable, "-c", code, *args], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)


def test_deploy_imports_help_and_a_dry_run_of_every_step_without_torch(aws, digits_data, tmp_path):
    imports = _python(
        BLOCKED
        + "import deploy.pipeline, deploy.config, deploy.data, deploy.ecr, deploy.cleanup\n"
        + "try:\n    import deploy.weights\nexcept ImportError:\n    print('weights-needs-torch')\n"
    )
    assert imports.returncode == 0 and imports.stdout.strip() == "weights-needs-torch", imports.stderr[-2000:]
    help_text = _python(RUN_PIPELINE, "--help")
    assert help_text.returncode == 0 and "--keep-endpoint" in help_text.stdout, help_text.stderr[-2000:]
    env = {"IC_RUNS_DIR": str(tmp_path / "runs")}
    dry = _python(RUN_PIPELINE, "all", "--with", "mme,transform,clarify", "--dry-run", "--data", str(digits_data), *GOOD, env_extra=env)
    assert dry.returncode == 0, dry.stderr[-3000:]
    assert "event=data classes=10" in dry.stderr  # the data step's pre-flight ran, on real images
    assert [c["operation"] for c in json.loads(dry.stdout)][-1] == "CreateProcessingJob"
    assert aws.requests() == []


def _org_defaults(home, resource_config: str = "") -> dict[str, str]:
    """The SDK's user config at its default place, ~/.config/sagemaker/config.yaml."""
    folder = home / ".config" / "sagemaker"
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(
        "SchemaVersion: '1.0'\n"
        "SageMaker:\n"
        "  TrainingJob:\n"
        "    Tags:\n"
        "      - Key: cost-centre\n"
        "        Value: cv-42\n"
        "    VpcConfig:\n"
        "      Subnets: [subnet-0aaaabbbbccccdddd]\n"
        "      SecurityGroupIds: [sg-0aaaabbbbccccdddd]\n"
        "    OutputDataConfig:\n"
        f"      KmsKeyId: {ORG_KEY}\n" + resource_config
    )
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("XDG_CONFIG_HOME", "SAGEMAKER_USER_CONFIG_OVERRIDE", "SAGEMAKER_ADMIN_CONFIG_OVERRIDE")
    }
    return {**env, "HOME": str(home), "IC_RUNS_DIR": str(home / "runs")}


def _dry_train(env: dict[str, str], *extra: str) -> subprocess.CompletedProcess:
    args = [sys.executable, "-m", "deploy.pipeline", "train", "--dry-run", *GOOD, *extra]
    return subprocess.run(args, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)


def test_the_sdk_defaults_of_the_organisation_apply_and_are_checked_too(aws, tmp_path):
    result = _dry_train(_org_defaults(tmp_path / "home"))
    assert result.returncode == 0, result.stderr[-3000:]
    (training,) = [c["request"] for c in json.loads(result.stdout) if c["operation"] == "CreateTrainingJob"]
    assert {"Key": "cost-centre", "Value": "cv-42"} in training["Tags"] and {"Key": "run-id", "Value": "dry-run"} in training["Tags"]
    assert training["VpcConfig"]["Subnets"] == ["subnet-0aaaabbbbccccdddd"]
    assert training["OutputDataConfig"]["KmsKeyId"] == ORG_KEY
    # a default SageMaker would refuse (an alias as the volume key of an EBS-backed instance) stops the run before sending
    bad = _org_defaults(tmp_path / "home2", "    ResourceConfig:\n      VolumeKmsKeyId: alias/org-key\n")
    refused = _dry_train(bad, "--train-instance-type", "ml.m5.xlarge")
    assert refused.returncode == 2
    assert "AWS would refuse CreateTrainingJob; nothing was sent" in refused.stderr
    assert "ResourceConfig.VolumeKmsKeyId: 'alias/org-key' is not a key id or key ARN" in refused.stderr
    assert aws.requests() == []
