"""Only a Docker image manifest v2 schema 2 reaches a job or a model (deploy/manifest.py).

ECR is the emulator (it stores any manifest, and never returns ``imageManifestMediaType``); the
other registry is Debian's ``docker-registry`` on 127.0.0.1, to which an OCI index, a single OCI
manifest and a Docker v2 manifest are pushed by hand through the registry HTTP API, as BuildKit or
Docker Desktop's containerd store would push them.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import urllib.request

import boto3
import pytest

from deploy import manifest, pipeline
from deploy.aws import Aws
from deploy.config import load_config
from deploy.context import StepError
from deploy.state import RunState
from tests.aws.conftest import BUCKET, REGION, REPOSITORY, ROLE, pinned_image
from tests.aws.test_push import registry  # noqa: F401  (the fixture: docker-registry on 127.0.0.1)

CONFIG = {"mediaType": "application/vnd.oci.image.config.v1+json"}
DOCKER_CONFIG = {"mediaType": "application/vnd.docker.container.image.v1+json"}


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _manifests(config: bytes, layer: bytes) -> dict[str, dict]:
    """The three shapes a push can take, over the same config and layer."""
    blobs = {"size": len(config), "digest": _digest(config)}, {"size": len(layer), "digest": _digest(layer)}
    oci = {
        "schemaVersion": 2,
        "mediaType": manifest.OCI_MANIFEST,
        "config": {**CONFIG, **blobs[0]},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", **blobs[1]}],
    }
    docker = {
        "schemaVersion": 2,
        "mediaType": manifest.DOCKER_V2,
        "config": {**DOCKER_CONFIG, **blobs[0]},
        "layers": [{"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip", **blobs[1]}],
    }
    oci_bytes = json.dumps(oci).encode()
    index = {  # what BuildKit pushes with attestations: the image and an attestation manifest
        "schemaVersion": 2,
        "mediaType": manifest.OCI_INDEX,
        "manifests": [
            {
                "mediaType": manifest.OCI_MANIFEST,
                "size": len(oci_bytes),
                "digest": _digest(oci_bytes),
                "platform": {"os": "linux", "architecture": "amd64"},
            },
        ],
    }
    return {"oci-index": index, "oci-manifest": oci, "docker-v2": docker}


def _context(tmp_path, **overrides):
    cfg = load_config(
        overrides={"region": REGION, "role_arn": ROLE, "bucket": BUCKET, "runs_dir": str(tmp_path), "stream_logs": False, **overrides},
        environ={},
    )
    channels = {c: f"s3://{BUCKET}/data/{c}/" for c in ("train", "validation", "test")}
    RunState(run_id="m", channels=channels, final_model_data=f"s3://{BUCKET}/seed/model.tar.gz").save(cfg.runs_dir)
    return pipeline.context(cfg, run_id="m", yes=True)


@pytest.mark.parametrize(("tag", "says"), [("oci-index", "an OCI image index"), ("oci-manifest", "a single OCI image manifest")])
def test_an_oci_push_to_ecr_never_reaches_a_job_or_a_model(gate, tmp_path, tag, says):
    body = json.dumps(_manifests(b"{}", b"layer")[tag])
    boto3.client("ecr", region_name=REGION).put_image(repositoryName=REPOSITORY, imageManifest=body, imageTag=tag)
    with pytest.raises(StepError) as refused:
        pipeline.run(["train", "deploy"], _context(tmp_path, image_tag=tag))
    message = str(refused.value)
    assert says in message and f"SageMaker pulls only a Docker image manifest v2 schema 2 ({manifest.DOCKER_V2})" in message
    assert "--provenance=false --sbom=false" in message and "containerd" in message  # the fix
    assert not [op for op, _ in gate.log if op.startswith("Create")]
    assert gate.calls("CreateTrainingJob") == [] and gate.calls("CreateModel") == []


def test_a_docker_v2_push_to_ecr_passes_and_is_said(gate, tmp_path, capsys):
    ctx = _context(tmp_path)
    assert ctx.image_uri() == pinned_image()
    assert f"event=manifest_ok image={pinned_image()} media_type={manifest.DOCKER_V2}" in capsys.readouterr().out


def _push(host: str, tag: str, document: dict, blobs: list[bytes]) -> str:
    """Blobs, then the manifest under ``tag``, through the registry HTTP API; returns the manifest's digest."""
    base = f"http://{host}/v2/image-classifier"
    for blob in blobs:
        start = urllib.request.Request(f"{base}/blobs/uploads/", method="POST")
        with urllib.request.urlopen(start, timeout=10) as response:
            location = response.headers["Location"]
        location = location if location.startswith("http") else f"http://{host}{location}"
        separator = "&" if "?" in location else "?"
        put = urllib.request.Request(f"{location}{separator}digest={_digest(blob)}", data=blob, method="PUT")
        put.add_header("Content-Type", "application/octet-stream")
        urllib.request.urlopen(put, timeout=10).close()
    body = json.dumps(document).encode()
    request = urllib.request.Request(f"{base}/manifests/{tag}", data=body, method="PUT")
    request.add_header("Content-Type", document["mediaType"])
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.headers["Docker-Content-Digest"]


@pytest.mark.skipif(shutil.which("docker-registry") is None, reason="docker-registry: local/system_deps.sh --test installs it")
def test_a_registry_push_is_read_back_by_digest_and_only_docker_v2_passes(aws, registry):  # noqa: F811
    config, layer = b'{"architecture":"amd64","os":"linux"}', b"layer bytes"
    shapes = _manifests(config, layer)
    oci_digest = _push(registry, "oci-manifest", shapes["oci-manifest"], [config, layer])
    index_digest = _push(registry, "oci-index", shapes["oci-index"], [])
    docker_digest = _push(registry, "docker-v2", shapes["docker-v2"], [config, layer])
    aws_session = Aws.connect(REGION)
    for digest, says in ((index_digest, "an OCI image index"), (oci_digest, "a single OCI image manifest")):
        with pytest.raises(manifest.ManifestRefused, match=says):
            manifest.check(aws_session, f"{registry}/image-classifier@{digest}")
    assert manifest.check(aws_session, f"{registry}/image-classifier@{docker_digest}") == manifest.DOCKER_V2


@pytest.mark.parametrize(
    ("document", "kind"),
    [
        ({"schemaVersion": 2, "manifests": []}, manifest.OCI_INDEX),  # an index without its optional mediaType
        ({"schemaVersion": 2, "config": {"mediaType": "application/vnd.oci.image.config.v1+json"}}, manifest.OCI_MANIFEST),
        ({"schemaVersion": 1, "fsLayers": []}, manifest.DOCKER_V1),
        ({"schemaVersion": 2, "mediaType": manifest.DOCKER_V2}, manifest.DOCKER_V2),
    ],
)
def test_the_media_type_is_read_from_the_manifest_itself(document, kind):
    assert manifest.media_type(json.dumps(document)) == kind
