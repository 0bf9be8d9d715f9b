#!/usr/bin/env bash
# Build (or reuse) the image, push it to ECR, then run the AWS pipeline.
#
#   deploy/push_and_train.sh [--skip-build] [--local-image TAG] [--push-only] [--bake-weights] [pipeline arguments...]
#
# The configuration (region, role, bucket, ...) comes from deploy/config.toml, IC_* variables
# or flags passed through to the pipeline (see deploy/config.example.toml). Examples:
#   deploy/push_and_train.sh --data ~/dogImages.zip --yes              # push, then data weights tune best train deploy query
#   deploy/push_and_train.sh --skip-build --dry-run                     # print every create request, send nothing
#   deploy/push_and_train.sh --bake-weights --push-only                 # ImageNet weights baked into the image, push only
set -euo pipefail

cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
DOCKER=${DOCKER:-docker}
local_image="image-classifier:local"
build=1
push_only=0
bake=0
pipeline_args=()
config_args=()

while (($#)); do
  case "$1" in
    --skip-build) build=0 ;;
    --local-image) local_image="$2"; shift ;;
    --push-only) push_only=1 ;;
    --bake-weights) bake=1 ;;
    --config|--region|--role-arn|--bucket|--prefix|--repository|--image-tag|--registry|--kms-key-id|--set)
      config_args+=("$1" "$2"); pipeline_args+=("$1" "$2"); shift ;;
    *) pipeline_args+=("$1") ;;
  esac
  shift
done

say() { printf 'push_and_train: %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

[[ -x "$PYTHON" ]] || die "$PYTHON not found: run 'make venv' first"
command -v "$DOCKER" >/dev/null || die "docker not found"

dry_run=0
for arg in "${pipeline_args[@]+"${pipeline_args[@]}"}"; do [[ "$arg" == "--dry-run" ]] && dry_run=1; done

# 1. the configuration, validated before anything is built or sent
"$PYTHON" -c 'import sys; from deploy.config import get_args; get_args(sys.argv[1:])' "${config_args[@]+"${config_args[@]}"}" \
  || die "fix the configuration above (deploy/config.example.toml documents every field)"

# 2. the image
if ((build)); then
  build_args=()
  if ((bake)); then
    model=$("$PYTHON" -c 'import sys; from deploy.config import get_args; print(get_args(sys.argv[1:]).model)' "${config_args[@]+"${config_args[@]}"}")
    say "fetching ImageNet weights of $model to bake into the image"
    "$PYTHON" -m deploy.weights --model "$model" --out docker/pretrained
    build_args+=(--build-arg PRETRAINED_DIR=docker/pretrained)
  fi
  say "building $local_image"
  "$DOCKER" build "${build_args[@]+"${build_args[@]}"}" -t "$local_image" .
else
  "$DOCKER" image inspect "$local_image" >/dev/null 2>&1 || die "--skip-build: no local image $local_image"
  say "reusing $local_image"
fi

# 3. ECR: repository, login, tag, push (skipped in a dry run: nothing is sent)
if ((dry_run)); then
  say "dry run: not pushing"
else
  target=$("$PYTHON" -m deploy.ecr repository "${config_args[@]+"${config_args[@]}"}")
  registry=$("$PYTHON" -m deploy.ecr registry "${config_args[@]+"${config_args[@]}"}")
  say "logging in to $registry"
  "$PYTHON" -m deploy.ecr password "${config_args[@]+"${config_args[@]}"}" | "$DOCKER" login --username AWS --password-stdin "$registry" >/dev/null
  say "pushing $target"
  "$DOCKER" tag "$local_image" "$target"
  "$DOCKER" push "$target"
  pipeline_args+=(--set "image_uri=$target")
fi

# 4. the pipeline
if ((push_only)); then
  say "pushed; pipeline skipped (--push-only)"
  exit 0
fi
exec "$PYTHON" -m deploy.pipeline all "${pipeline_args[@]+"${pipeline_args[@]}"}"
