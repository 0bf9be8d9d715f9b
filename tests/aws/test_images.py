"""Images by digest: a tag per build, immutable tags, a lifecycle policy, and every job on one digest.

The repository and its images are the emulator's ECR; ``push_image`` leaves there what a
``docker push`` leaves (a manifest under a tag). The real push, through a Docker engine, is
tests/aws/test_push.py.
"""

from __future__ import annotations

import json
import re

import boto3
import pytest
from botocore.exceptions import ClientError

from deploy import ecr
from deploy.aws import Aws
from deploy.config import load_config
from tests.aws.conftest import BUCKET, REGION, REPOSITORY, ROLE, pinned_image, push_image

TAG = re.compile(r"^\d{8}-\d{6}(-[0-9a-f]{4,})?$")


def _cfg(**overrides):
    return load_config(overrides={"region": REGION, "role_arn": ROLE, "bucket": BUCKET, **overrides}, environ={})


def _repository(capsys, *args: str) -> tuple[int, str, str]:
    code = ecr.main(["repository", "--region", REGION, "--role-arn", ROLE, "--bucket", BUCKET, *args])
    out = capsys.readouterr()
    return code, out.out.strip(), out.err


def test_a_new_repository_has_immutable_tags_and_a_lifecycle_policy_and_each_build_a_tag(aws, capsys):
    code, target, err = _repository(capsys, "--repository", "fresh-repo")
    assert code == 0, err
    uri, tag = target.rsplit(":", 1)
    assert uri == f"123456789012.dkr.ecr.{REGION}.amazonaws.com/fresh-repo" and TAG.match(tag), target
    client = boto3.client("ecr", region_name=REGION)
    repository = client.describe_repositories(repositoryNames=["fresh-repo"])["repositories"][0]
    assert repository["imageTagMutability"] == "IMMUTABLE" and repository["imageScanningConfiguration"] == {"scanOnPush": True}
    rules = json.loads(client.get_lifecycle_policy(repositoryName="fresh-repo")["lifecyclePolicyText"])["rules"]
    assert [r["selection"] for r in rules] == [
        {"tagStatus": "tagged", "tagPrefixList": ["ic-keep-"], "countType": "imageCountMoreThan", "countNumber": 10000},
        {"tagStatus": "untagged", "countType": "sinceImagePushed", "countUnit": "days", "countNumber": 1},
        {"tagStatus": "any", "countType": "imageCountMoreThan", "countNumber": 10},
    ]
    # a second build: another tag (the clock moved), the same repository, the policy untouched
    client.put_lifecycle_policy(repositoryName="fresh-repo", lifecyclePolicyText=ecr.lifecycle_policy(3))
    assert ecr.build_tag(0).startswith("19700101-000000") and TAG.match(ecr.build_tag(0))
    code, again, _ = _repository(capsys, "--repository", "fresh-repo")
    assert code == 0 and again.rsplit(":", 1)[0] == uri
    kept = json.loads(client.get_lifecycle_policy(repositoryName="fresh-repo")["lifecyclePolicyText"])["rules"][2]
    assert kept["selection"]["countNumber"] == 3  # a policy already there is the owner's: left alone


def test_an_immutable_repository_takes_every_build_and_refuses_a_tag_it_holds(aws, capsys):
    """The seeded repository is immutable; each build has its own tag, so pushing again always works."""
    first = push_image("20261202-080000-aaaaaaa")
    second = push_image("20261202-090000-bbbbbbb")
    assert first != second
    with pytest.raises(ClientError, match="already exists"):
        push_image("20261202-090000-bbbbbbb")  # what ECR itself answers a second push of a tag
    code, _, err = _repository(capsys, "--image-tag", "20261202-090000-bbbbbbb")
    assert code == 2
    assert "tag '20261202-090000-bbbbbbb' already exists in image-classifier, whose tags are immutable: leave image_tag unset" in err
    code, target, _ = _repository(capsys, "--image-tag", "20261202-100000-ccccccc")
    assert code == 0 and target.endswith(f"/{REPOSITORY}:20261202-100000-ccccccc")


def test_a_run_names_its_image_by_digest(aws):
    says: list[str] = []
    aws_session = Aws.connect(REGION)
    newest = push_image("20261203-080000-newest")
    assert ecr.pinned(aws_session, _cfg(), says.append) == pinned_image(newest)  # no tag: the newest push
    assert says == [f"event=image image={pinned_image(newest)} tag=newest"]
    seeded_tag = "20261201-120000-seed"
    by_tag = ecr.pinned(aws_session, _cfg(image_tag=seeded_tag), says.append)
    assert by_tag == pinned_image(push_digest(seeded_tag)) != pinned_image(newest)
    uri = f"123456789012.dkr.ecr.{REGION}.amazonaws.com/{REPOSITORY}:{seeded_tag}"
    assert ecr.pinned(aws_session, _cfg(image_uri=uri), says.append) == by_tag
    digest_uri = f"{uri.rsplit(':', 1)[0]}@sha256:{'1' * 64}"
    assert ecr.pinned(aws_session, _cfg(image_uri=digest_uri), says.append) == digest_uri  # as given, nothing asked
    with pytest.raises(ecr.ImageError, match="has no tag 'never-pushed': push the image first"):
        ecr.pinned(aws_session, _cfg(image_tag="never-pushed"), says.append)
    with pytest.raises(ecr.ImageError, match="is in eu-west-1; SageMaker pulls images from the jobs' region"):
        ecr.pinned(aws_session, _cfg(image_uri=uri.replace(REGION, "eu-west-1")), says.append)


def push_digest(tag: str) -> str:
    details = boto3.client("ecr", region_name=REGION).describe_images(repositoryName=REPOSITORY, imageIds=[{"imageTag": tag}])
    return details["imageDetails"][0]["imageDigest"]
