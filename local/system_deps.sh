#!/usr/bin/env bash
# Debian packages the demo and the tests need; installs only what is missing.
#   python3-venv           make's virtual environment
#   dataset-fashion-mnist  offline sample photos      curl        the demo's query
#   openjdk-17-jre-headless  multi-model-server        shellcheck  static checks
#   docker.io, debootstrap   the container tier (a real engine, a local base image)
#   docker-registry          a local registry that deploy/push_and_train.sh pushes to in the tests
set -euo pipefail
sudo=""
[[ "$(id -u)" == 0 ]] || sudo="sudo"
missing=()
python3 -c 'import ensurepip, venv' 2>/dev/null || missing+=(python3-venv)
[[ -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]] || missing+=(dataset-fashion-mnist)
command -v curl >/dev/null || missing+=(curl)
command -v java >/dev/null || missing+=(openjdk-17-jre-headless)
if [[ "${1:-}" == "--test" ]]; then
  command -v shellcheck >/dev/null || missing+=(shellcheck)
  command -v dockerd >/dev/null || missing+=(docker.io)
  command -v debootstrap >/dev/null || missing+=(debootstrap)
  command -v docker-registry >/dev/null || missing+=(docker-registry)
fi
if (( ${#missing[@]} )); then
  echo "installing: ${missing[*]}"
  $sudo apt-get update -qq
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
