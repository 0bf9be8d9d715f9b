"""The image in ECR: a tag per build, the repository (with a lifecycle policy), a login, and the digest.

    python -m deploy.ecr repository   # the repository, created if missing; prints <repository URI>:<tag> to push
    python -m deploy.ecr password     # prints the registry password (pipe it to docker login)

Why digests: a tag can move (``latest`` did at every push), so trials of one tuning job launched
hours apart could run different images. Every job and model is given the pushed image's digest
(``repository@sha256:...``): ``push_and_train.sh`` passes it on after the push, and a run that
was given only a tag, or nothing, resolves it here (``pinned``) once, into the run's state.

- The default tag is new for each build (UTC time and git revision), so repositories with
  immutable tags work, and a repository this module creates has them. An explicit tag that an
  immutable repository already holds is refused before the build is pushed.
- A repository without a lifecycle policy gets one: untagged images expire after a day, and
  only the newest ``images_kept`` stay (each is ~7 GB of billed storage). An existing policy is
  left alone.

``registry`` in the config points the push at another registry (a pull-through mirror, or a
local one in the tests) while the repository and the login still come from ECR. Arguments that
are not configuration (the pipeline's own, which push_and_train.sh passes along) are ignored,
so the push goes to the region and repository the jobs will use.
"""

from __future__ import annotations

import argparse
import base64
import json
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from botocore.exceptions import ClientError

from deploy import config as config_module
from deploy.aws import Aws
from deploy.config import DeployConfig
from deploy.tags import tag_list

DRY_RUN_DIGEST = "sha256:" + "0" * 64
_ECR_URI = re.compile(
    r"^(?P<account>\d{12})\.dkr\.ecr\.(?P<region>[a-z0-9-]+)\.amazonaws\.com(\.cn)?/(?P<name>[^:@]+)(:(?P<tag>[\w][\w.-]*))?$"
)
_IMMUTABLE = ("IMMUTABLE", "IMMUTABLE_WITH_EXCLUSION")


class ImageError(ValueError):
    """The image cannot be used as asked (not pushed, a taken tag, another region); nothing was sent."""


def build_tag(now: float | None = None) -> str:
    """``20261201-120000-8311af9``: unique per build, and it names the commit it was built from."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(now))
    try:
        git = ["git", "-C", str(Path(__file__).resolve().parent), "rev-parse", "--short", "HEAD"]
        revision = subprocess.run(git, capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        revision = ""
    return f"{stamp}-{revision}" if revision else stamp


PROTECTED_PREFIX = "ic-keep-"  # a registered model's image: ic-keep-<group>-v<version> (deploy.registry)
PROTECT_RULE = "images of registered models (tags ic-keep-*) are kept: lower-priority rules cannot expire them"


def lifecycle_policy(kept: int) -> str:
    """ECR cannot exclude images from a rule, but an image a rule's tag selection matches is never expired by a
    rule of lower priority: the first rule selects the protected tags and expires only beyond ECR's image limit."""
    rules = [
        {
            "rulePriority": 1,
            "description": PROTECT_RULE,
            "selection": {
                "tagStatus": "tagged",
                "tagPrefixList": [PROTECTED_PREFIX],
                "countType": "imageCountMoreThan",
                "countNumber": 10000,
            },
            "action": {"type": "expire"},
        },
        {
            "rulePriority": 2,
            "description": "untagged images (a tag moved to a newer push) expire after a day",
            "selection": {"tagStatus": "untagged", "countType": "sinceImagePushed", "countUnit": "days", "countNumber": 1},
            "action": {"type": "expire"},
        },
        {
            "rulePriority": 3,  # a rule on every image comes last
            "description": f"only the newest {kept} images are kept",
            "selection": {"tagStatus": "any", "countType": "imageCountMoreThan", "countNumber": kept},
            "action": {"type": "expire"},
        },
    ]
    return json.dumps({"rules": rules})


def ensure_repository(aws: Aws, cfg: DeployConfig, *, run_tags: list[dict[str, str]]) -> dict:
    """The repository (created with immutable tags and scan on push if missing), with a lifecycle policy."""
    ecr = aws.client("ecr")
    try:
        repository = ecr.describe_repositories(repositoryNames=[cfg.repository])["repositories"][0]
    except ecr.exceptions.RepositoryNotFoundException:
        encryption = {"encryptionType": "KMS", "kmsKey": cfg.kms_key_id} if cfg.kms_key_id else {"encryptionType": "AES256"}
        repository = ecr.create_repository(
            repositoryName=cfg.repository,
            imageScanningConfiguration={"scanOnPush": True},
            imageTagMutability="IMMUTABLE",
            encryptionConfiguration=encryption,
            tags=run_tags,
        )["repository"]
    try:
        ecr.get_lifecycle_policy(repositoryName=cfg.repository)
    except ecr.exceptions.LifecyclePolicyNotFoundException:
        ecr.put_lifecycle_policy(repositoryName=cfg.repository, lifecyclePolicyText=lifecycle_policy(cfg.images_kept))
    return repository


def push_target(aws: Aws, cfg: DeployConfig) -> str:
    """``<repository URI>:<tag>`` to push to; refuses a tag an immutable repository already holds."""
    repository = ensure_repository(aws, cfg, run_tags=tag_list(None, cfg.tags))
    tag = cfg.image_tag or build_tag()
    if cfg.image_tag and repository.get("imageTagMutability") in _IMMUTABLE and _digest(aws, cfg.repository, tag):
        raise ImageError(
            f"tag {tag!r} already exists in {cfg.repository}, whose tags are immutable: leave image_tag unset "
            "(a new tag per build) or choose another"
        )
    return f"{cfg.registry}/{cfg.repository}:{tag}" if cfg.registry else f"{repository['repositoryUri']}:{tag}"


def _digest(aws: Aws, name: str, tag: str | None) -> str | None:
    """The digest of ``name:tag``, or of the newest image pushed when ``tag`` is None; None if there is none."""
    ecr = aws.client("ecr")
    try:
        if tag is not None:
            details = ecr.describe_images(repositoryName=name, imageIds=[{"imageTag": tag}])["imageDetails"]
        else:
            pages = ecr.get_paginator("describe_images").paginate(repositoryName=name)
            details = sorted((d for page in pages for d in page["imageDetails"]), key=lambda d: d["imagePushedAt"])[-1:]
    except (ecr.exceptions.ImageNotFoundException, ecr.exceptions.RepositoryNotFoundException):
        return None
    return details[0]["imageDigest"] if details else None


def pinned(aws: Aws, cfg: DeployConfig, say: Callable[[str], None]) -> str:
    """The image every job and model of a run uses: ``image_uri``, else the repository's tag or newest push, by digest."""
    uri = cfg.image_uri or cfg.repository_uri(aws.account()) + (f":{cfg.image_tag}" if cfg.image_tag else "")
    if "@sha256:" in uri:
        return uri
    repository_uri, tag = uri.rsplit(":", 1) if ":" in uri.rsplit("/", 1)[-1] else (uri, None)
    if aws.dry_run is not None:
        return f"{repository_uri}@{DRY_RUN_DIGEST}"
    found = _ECR_URI.match(uri)
    if found is None:
        say(f"event=image_not_pinned image={uri} reason=not_an_ECR_URI")
        if tag is None:
            raise ImageError(f"{uri} has no tag and is not in ECR: set image_uri to the pushed image (by digest)")
        return uri
    if found["region"] != cfg.region:
        raise ImageError(f"{uri} is in {found['region']}; SageMaker pulls images from the jobs' region ({cfg.region}): push it there")
    digest = _digest(aws, found["name"], tag)
    if digest is None:
        what = f"tag {tag!r}" if tag else "an image"
        raise ImageError(f"ECR repository {found['name']} has no {what}: push the image first (deploy/push_and_train.sh --push-only)")
    say(f"event=image image={repository_uri}@{digest} tag={tag or 'newest'}")
    return f"{repository_uri}@{digest}"


def protect(aws: Aws, cfg: DeployConfig, image_uri: str, tag: str, say: Callable[[str], None]) -> bool:
    """Tag the image ``image_uri`` (by digest) with ``tag`` (``PROTECTED_PREFIX``...), so the lifecycle keeps it; and give the
    repository the protecting rule when its policy is ours without it. False when the image is not in this account's ECR."""
    found = _ECR_URI.match(image_uri.split("@", 1)[0])
    if found is None or "@sha256:" not in image_uri:
        say(f"event=image_not_protected image={image_uri} reason=not_an_ECR_image_by_digest")
        return False
    ecr, name, digest = aws.client("ecr"), found["name"], image_uri.split("@", 1)[1]
    if aws.dry_run is not None:  # what the tag costs: the image's own manifest put again under the new tag
        ecr.put_image(repositoryName=name, imageManifest="<the image's manifest (BatchGetImage)>", imageTag=tag, imageDigest=digest)
        return True
    image = ecr.batch_get_image(repositoryName=name, imageIds=[{"imageDigest": digest}])["images"]
    if not image:
        raise ImageError(f"{image_uri} is not in ECR any more: register a model whose image exists")
    if not any(i.get("imageId", {}).get("imageTag") == tag for i in image):
        try:
            ecr.put_image(repositoryName=name, imageManifest=image[0]["imageManifest"], imageTag=tag, imageDigest=digest)
        except ecr.exceptions.ImageAlreadyExistsException:
            pass
    _protecting_policy(aws, cfg, name, say)
    say(f"event=image_protected image={image_uri} tag={tag}")
    return True


def _protecting_policy(aws: Aws, cfg: DeployConfig, name: str, say: Callable[[str], None]) -> None:
    ecr = aws.client("ecr")
    try:
        text = ecr.get_lifecycle_policy(repositoryName=name)["lifecyclePolicyText"]
    except ecr.exceptions.LifecyclePolicyNotFoundException:
        text = None
    if text is not None and PROTECTED_PREFIX in text:
        return
    ours = {r["description"] for r in json.loads(lifecycle_policy(cfg.images_kept))["rules"]}
    if text is None or all(r.get("description") in ours or "newest" in str(r.get("description")) for r in json.loads(text)["rules"]):
        ecr.put_lifecycle_policy(repositoryName=name, lifecyclePolicyText=lifecycle_policy(cfg.images_kept))
        say(f"event=lifecycle_policy repository={name} protects={PROTECTED_PREFIX}*")
    else:
        say(f"event=lifecycle_not_ours repository={name} detail='add a first rule selecting tag prefix {PROTECTED_PREFIX} (docs/aws.md)'")


def login(aws: Aws) -> tuple[str, str, str]:
    """(registry host, user, password) from ECR's authorization token."""
    data = aws.client("ecr").get_authorization_token()["authorizationData"][0]
    user, _, password = base64.b64decode(data["authorizationToken"]).decode().partition(":")
    return data["proxyEndpoint"].removeprefix("https://"), user, password


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    parser.add_argument("what", choices=["repository", "password", "registry"])
    config_module.add_arguments(parser)
    args, _ = parser.parse_known_args(argv)
    try:
        cfg = config_module.from_args(args)
        aws = Aws.connect(cfg.region)
        if args.what == "repository":
            print(push_target(aws, cfg))
        elif args.what == "registry":
            print(cfg.registry or login(aws)[0])
        else:
            print(login(aws)[2])
    except (config_module.ConfigError, ImageError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except ClientError as exc:
        print(f"error: AWS: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
