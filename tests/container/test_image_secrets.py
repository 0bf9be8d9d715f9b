"""No credentials or tokens in the image: its filesystem and its configuration, scanned.

The scan runs on an image derived from the real one that plants an AWS key pair (in
``~/.aws/credentials`` and in an ``ENV``) and a token file; it must report exactly those plants,
so it provably catches a key and the real image, which is everything else, holds none. The
planted values are made up at run time (no example key is written in the repository). AWS's
documentation marks its made-up keys with ``EXAMPLE``; the copies of those that botocore ships
are reported, not failed.

The filesystem is read by GNU grep inside a container of the image (``--network none``), over
every file, binaries included; the configuration (environment, labels, the command of every
layer in the history) by ``docker inspect`` and ``docker history``.
"""

from __future__ import annotations

import json
import random
import re
import string
import time

import pytest

from tests.container.conftest import BUILD_FACTS

# Perl-compatible (grep -P and Python): access key ids (user, temporary, role, group, ... prefixes),
# secret keys next to their name, and GitHub, Hugging Face and Slack tokens; not inside longer runs.
KEY_ID = r"(?<![A-Z0-9])(?:A3T[A-Z0-9]|AKIA|ASIA|AGPA|AIDA|AROA|ANPA|ANVA|AIPA)[A-Z2-7]{16}(?![A-Z0-9])"
SECRET = r"(?i:aws_?secret_?access_?key)[\"']?\s*[:=]\s*[\"']?[A-Za-z0-9/+]{40}(?![A-Za-z0-9/+])"
TOKENS = r"(?<![A-Za-z0-9_])(?:ghp_[A-Za-z0-9]{36}|hf_[A-Za-z]{34}|xox[bap]-[A-Za-z0-9-]{20,})(?![A-Za-z0-9])"
PATTERN = f"{KEY_ID}|{SECRET}|{TOKENS}"
CREDENTIAL_FILES = "-path '*/.aws/credentials' -o -name .netrc -o -name .git-credentials -o -name .pypirc -o -path '*/.docker/config.json'"
PLANTED_FILES = {"/root/.aws/credentials", "/root/.netrc"}


def _made_up_keys() -> tuple[str, str]:
    rng = random.Random()
    key_id = "AKIA" + "".join(rng.choice(string.ascii_uppercase + "234567") for _ in range(16))
    secret = "".join(rng.choice(string.ascii_letters + string.digits + "/+") for _ in range(40))
    return key_id, secret


@pytest.fixture(scope="module")
def planted(engine, image, tmp_path_factory):
    key_id, secret = _made_up_keys()
    context = tmp_path_factory.mktemp("planted")
    (context / "credentials").write_text(f"[default]\naws_access_key_id = {key_id}\naws_secret_access_key = {secret}\n")
    (context / "netrc").write_text("machine example.invalid login me password hunter2\n")
    (context / "Dockerfile").write_text(
        f"FROM {image}\nCOPY credentials /root/.aws/credentials\nCOPY netrc /root/.netrc\nENV AWS_SECRET_ACCESS_KEY={secret}\n"
    )
    tag = "image-classifier:planted-secrets"
    engine.docker("build", "-t", tag, str(context), timeout=300)
    yield tag, key_id, secret
    engine.docker("rmi", "-f", tag, check=False)


def scan_filesystem(engine, tag: str) -> tuple[set[str], set[str]]:
    """(every ``file:match`` of a key, secret or token, every credentials file) in the image's filesystem."""
    script = (
        "roots=$(ls -d /*/ | grep -vE '^/(proc|sys|dev)/$'); "
        'grep -rPaoHs --devices=skip -e "$PATTERN" $roots; echo "GREP_STATUS $?"; '
        f"find $roots -xdev \\( {CREDENTIAL_FILES} \\) -type f -printf 'FILE %p\\n'"
    )
    result = engine.docker(
        "run", "--rm", "--network", "none", "-e", f"PATTERN={PATTERN}", "--entrypoint", "sh", tag, "-c", script, timeout=900
    )
    lines = set(result.stdout.splitlines())
    assert "GREP_STATUS 0" in lines, result.stdout[-2000:] + result.stderr[-2000:]  # it ran, and found the plants
    matches = {line for line in lines if not line.startswith(("FILE ", "GREP_STATUS"))}
    return matches, {line[5:] for line in lines if line.startswith("FILE ")}


def scan_configuration(engine, tag: str) -> list[str]:
    """Environment, labels and layer commands that carry a key, a secret or a credential URL."""
    config = json.loads(engine.docker("image", "inspect", tag).stdout)[0]["Config"]
    history = engine.docker("history", "--no-trunc", "--format", "{{.CreatedBy}}", tag).stdout.splitlines()
    texts = [*(config.get("Env") or []), *(f"{k}={v}" for k, v in (config.get("Labels") or {}).items()), *history]
    patterns = [re.compile(KEY_ID), re.compile(r"(?i)(secret|token|password)[A-Z_]*=[^ \"]{8,}"), re.compile(r"://[^/\s:@]+:[^/\s@]+@")]
    return [text for text in texts if any(p.search(text) for p in patterns)]


@pytest.mark.container
def test_no_credentials_in_the_image_and_the_scan_catches_planted_ones(engine, image, planted):
    tag, key_id, secret = planted
    started = time.monotonic()
    everything, files = scan_filesystem(engine, tag)
    BUILD_FACTS["secret_scan_seconds"] = round(time.monotonic() - started, 1)
    # AWS's documentation marks every made-up key it prints with EXAMPLE (botocore ships some)
    matches = {line for line in everything if "EXAMPLE" not in line.split(":", 1)[1]}
    BUILD_FACTS["secret_scan_documented_examples_ignored"] = len(everything - matches)
    found = {line.split(":", 1)[0] for line in matches}
    assert {f"/root/.aws/credentials:{key_id}"} <= matches, matches
    assert any(secret in line for line in matches), matches
    assert found == {"/root/.aws/credentials"}, sorted(matches)[:20]  # nothing anywhere else in the image
    assert files == PLANTED_FILES, files
    configuration = scan_configuration(engine, tag)
    assert any(secret in text for text in configuration), configuration
    assert [t for t in configuration if secret not in t and key_id not in t] == []  # the real image's config is clean
    assert scan_configuration(engine, image) == []
