"""The pushed image's manifest, read back: SageMaker pulls only a Docker image manifest v2 schema 2.

    python -m deploy.manifest <image URI by digest> [configuration arguments]   # push_and_train.sh runs it after the push

SageMaker's CreateModel refuses an OCI image index ("Unsupported manifest media type"), what
BuildKit pushes when it adds provenance or SBOM attestations (the default of recent Docker) and
what Docker Desktop's containerd image store pushes; a single OCI image manifest is refused too.
A registry accepts them all, so the manifest of the exact reference the jobs will use is read back
after the push, before any job or model is created: from ECR with ``BatchGetImage``, from another
registry (``registry``: a local one in the tests) through the registry HTTP API. ECR stores an
``imageManifestMediaType`` but the emulator never returns it, so the media type is read from the
manifest itself (its ``mediaType``; an index by its ``manifests`` list; an OCI manifest by its
config's media type), which is what the registry serves in any case.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import urllib.request
from typing import Any

from botocore.exceptions import ClientError

from deploy import config as config_module
from deploy.aws import Aws

DOCKER_V2 = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_V1 = "application/vnd.docker.distribution.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
ACCEPTED = (DOCKER_V2, DOCKER_LIST, OCI_INDEX, OCI_MANIFEST)  # ask for every kind: the registry must not convert
FIX = (
    "rebuild and push a single-platform Docker v2 image: the classic builder (DOCKER_BUILDKIT=0 docker build "
    "--platform linux/amd64 ...), or buildx with 'docker buildx build --platform linux/amd64 --provenance=false "
    "--sbom=false --output type=image,oci-mediatypes=false,push=true ...'; with Docker Desktop's containerd image "
    "store, turn it off (Settings > General > 'Use containerd for pulling and storing images') before building, "
    "or copy the image over as Docker v2 (skopeo copy --format v2s2 docker://<image> docker://<image>)"
)
_ECR_URI = re.compile(r"^\d{12}\.dkr\.ecr\.[a-z0-9-]+\.amazonaws\.com(\.cn)?/")


class ManifestRefused(ValueError):
    """The image's manifest is not one SageMaker pulls; nothing was created."""


def media_type(manifest: str, content_type: str | None = None) -> str:
    """The manifest's media type, from the document itself (``content_type``: the registry's header, a fallback)."""
    try:
        document: dict[str, Any] = json.loads(manifest)
    except ValueError:
        return content_type or "unreadable"
    if document.get("mediaType"):
        return str(document["mediaType"])
    if "manifests" in document:
        return OCI_INDEX
    if document.get("schemaVersion") == 1:
        return DOCKER_V1
    if str(document.get("config", {}).get("mediaType", "")).startswith("application/vnd.oci."):
        return OCI_MANIFEST
    return content_type or "unknown"


def problem(image_uri: str, kind: str) -> str | None:
    if kind == DOCKER_V2:
        return None
    what = {
        OCI_INDEX: "an OCI image index (several platforms or attestations)",
        DOCKER_LIST: "a Docker manifest list (several platforms)",
        OCI_MANIFEST: "a single OCI image manifest",
        DOCKER_V1: "a Docker v1 manifest",
    }.get(kind, f"a manifest of type {kind}")
    return f"{image_uri} is {what} ({kind}); SageMaker pulls only a Docker image manifest v2 schema 2 ({DOCKER_V2}): {FIX}"


def split(image_uri: str) -> tuple[str, str, str]:
    """(registry, repository, reference: a digest or a tag)."""
    registry, _, rest = image_uri.partition("/")
    if "@" in rest:
        repository, _, reference = rest.partition("@")
    else:
        repository, _, reference = rest.rpartition(":") if ":" in rest else (rest, "", "latest")
    return registry, repository, reference


def from_ecr(ecr: Any, repository: str, reference: str) -> str:
    image_id = {"imageDigest": reference} if reference.startswith("sha256:") else {"imageTag": reference}
    answer = ecr.batch_get_image(repositoryName=repository, imageIds=[image_id], acceptedMediaTypes=list(ACCEPTED))
    if not answer.get("images"):
        reasons = "; ".join(f"{f.get('failureCode')}: {f.get('failureReason')}" for f in answer.get("failures", []))
        raise ManifestRefused(f"ECR has no image {repository}@{reference} ({reasons or 'not found'}): push it first")
    return str(answer["images"][0]["imageManifest"])


def from_registry(registry: str, repository: str, reference: str) -> tuple[str, str | None]:
    """The registry HTTP API (``GET /v2/<repository>/manifests/<reference>``); plain HTTP for a registry on this machine."""
    local = registry.split(":")[0] in ("127.0.0.1", "localhost")
    request = urllib.request.Request(
        f"{'http' if local else 'https'}://{registry}/v2/{repository}/manifests/{reference}", headers={"Accept": ", ".join(ACCEPTED)}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return response.read().decode(), response.headers.get("Content-Type")


def check(aws: Aws, image_uri: str) -> str:
    """The manifest's media type when SageMaker can pull it; ``ManifestRefused`` with the reason and the fix otherwise."""
    registry, repository, reference = split(image_uri)
    try:
        if _ECR_URI.match(image_uri):
            kind = media_type(from_ecr(aws.client("ecr"), repository, reference))
        else:
            kind = media_type(*from_registry(registry, repository, reference))
    except (ClientError, OSError) as exc:
        raise ManifestRefused(f"cannot read the manifest of {image_uri} ({exc}): is it pushed?") from exc
    if reason := problem(image_uri, kind):
        raise ManifestRefused(reason)
    return kind


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("image_uri")
    config_module.add_arguments(parser)
    args, _ = parser.parse_known_args(argv)
    try:
        cfg = config_module.from_args(args)
        kind = check(Aws.connect(cfg.region), args.image_uri)
    except (config_module.ConfigError, ManifestRefused) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"event=manifest_ok image={args.image_uri} media_type={kind}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
