"""ECR for push_and_train.sh: the repository (created if missing) and a login for ``docker login``.

    python -m deploy.ecr repository   # prints the image URI to tag and push
    python -m deploy.ecr password     # prints the registry password (pipe it to docker login)

``registry`` in the config points the push at another registry (a pull-through mirror, or a
local one in the tests) while the repository and the login still come from ECR. Arguments that
are not configuration (the pipeline's own, which push_and_train.sh passes along) are ignored,
so the push goes to the region and repository the jobs will use.
"""

from __future__ import annotations

import argparse
import base64
import sys

from deploy import config as config_module
from deploy.aws import Aws
from deploy.tags import tag_list


def ensure_repository(aws: Aws, name: str, *, kms_key_id: str | None, run_tags: list[dict[str, str]]) -> str:
    ecr = aws.client("ecr")
    try:
        return ecr.describe_repositories(repositoryNames=[name])["repositories"][0]["repositoryUri"]
    except ecr.exceptions.RepositoryNotFoundException:
        pass
    encryption = {"encryptionType": "KMS", "kmsKey": kms_key_id} if kms_key_id else {"encryptionType": "AES256"}
    created = ecr.create_repository(
        repositoryName=name,
        imageScanningConfiguration={"scanOnPush": True},
        imageTagMutability="MUTABLE",
        encryptionConfiguration=encryption,
        tags=run_tags,
    )
    return created["repository"]["repositoryUri"]


def login(aws: Aws) -> tuple[str, str, str]:
    """(registry host, user, password) from ECR's authorization token."""
    data = aws.client("ecr").get_authorization_token()["authorizationData"][0]
    user, _, password = base64.b64decode(data["authorizationToken"]).decode().partition(":")
    return data["proxyEndpoint"].removeprefix("https://"), user, password


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["repository", "password", "registry"])
    config_module.add_arguments(parser)
    args, _ = parser.parse_known_args(argv)
    try:
        cfg = config_module.from_args(args)
    except config_module.ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    aws = Aws.connect(cfg.region)
    if args.what == "repository":
        uri = ensure_repository(aws, cfg.repository, kms_key_id=cfg.kms_key_id, run_tags=tag_list(None, cfg.tags))
        if cfg.registry:
            uri = f"{cfg.registry}/{cfg.repository}"
        print(f"{uri}:{cfg.image_tag}")
    elif args.what == "registry":
        print(cfg.registry or login(aws)[0])
    else:
        print(login(aws)[2])
    return 0


if __name__ == "__main__":
    sys.exit(main())
