#!/usr/bin/env bash
# Check the account, build (or reuse) the image for linux/amd64, push it to ECR under a tag of
# its own, then run the AWS pipeline on the pushed image's digest.
#
#   deploy/push_and_train.sh [script options] [pipeline and configuration arguments...]
#
# Script options:
#   --skip-build           reuse the local image (it must be linux/amd64)
#   --build                build even in a dry run (a dry run builds nothing unless asked)
#   --local-image TAG      local image name (default: image-classifier:local)
#   --platform OS/ARCH     build platform (default: linux/amd64, what SageMaker runs)
#   --push-only            push, then stop before the pipeline
#   --bake-weights         bake the backbone's ImageNet weights into the image
#   -h, --help             this text and the pipeline's arguments
# Every other argument goes to `python -m deploy.pipeline all` and to the configuration check
# (--region X or --region=X, --set key=value, --dry-run, --yes, --keep-endpoint, --with ...).
# The configuration comes from deploy/config.toml, IC_* variables or flags. Examples:
#   deploy/push_and_train.sh --data ~/dogImages.zip --yes              # check, push, then data weights tune best train deploy query
#   deploy/push_and_train.sh --skip-build --dry-run                     # print every create request, send nothing
#   deploy/push_and_train.sh --bake-weights --push-only                 # ImageNet weights baked into the image, push only
set -euo pipefail

cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
DOCKER=${DOCKER:-docker}
local_image="image-classifier:local"
platform="linux/amd64"
build=1
build_asked=0
push_only=0
bake=0
dry_run=0
pipeline_args=()

say() { printf 'push_and_train: %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }
usage() { sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; }

while (($#)); do
  case "$1" in
    -h|--help) usage; echo; exec "$PYTHON" -m deploy.pipeline --help ;;
    --skip-build) build=0 ;;
    --build) build_asked=1 ;;
    --local-image) (($# > 1)) || die "--local-image needs a value"; local_image="$2"; shift ;;
    --local-image=*) local_image="${1#*=}" ;;
    --platform) (($# > 1)) || die "--platform needs a value"; platform="$2"; shift ;;
    --platform=*) platform="${1#*=}" ;;
    --push-only) push_only=1 ;;
    --bake-weights) bake=1 ;;
    --dry-run) dry_run=1; pipeline_args+=("$1") ;;
    *) pipeline_args+=("$1") ;;
  esac
  shift
done

[[ -x "$PYTHON" ]] || die "$PYTHON not found: run 'make venv' first"
args=("${pipeline_args[@]+"${pipeline_args[@]}"}")
# 0. a GPU batch transform needs NVIDIA's forward-compatibility libraries in the image: a build here carries
#    them (from NVIDIA's public CUDA base image) and the run knows it (deploy/build_args.py)
compat_arg=""
if ((build)); then
  compat_arg=$("$PYTHON" -m deploy.build_args "${args[@]+"${args[@]}"}")
  [[ -z "$compat_arg" ]] || args+=(--set image_cuda_compat=true)
fi

# 1. the configuration and the arguments, checked before anything is built or sent (all of them:
#    the image must go to the region and repository the jobs will use); then the account's
#    pre-flight (credentials, bucket region, role, quotas, Docker): a 7 GB build is slow to waste
"$PYTHON" -m deploy.pipeline all --validate-only "${args[@]+"${args[@]}"}" \
  || die "fix the configuration above (deploy/config.example.toml and docs/aws.md document every field)"
if ((!dry_run && !push_only)); then
  "$PYTHON" -m deploy.pipeline check "${args[@]+"${args[@]}"}" \
    || die "fix what the pre-flight found (each status=problem line names its fix)"
fi

# 2. the image (a dry run builds only when asked: it sends nothing and needs no image)
if ((dry_run && !build_asked)); then
  say "dry run: not building (pass --build to build anyway) and not pushing"
elif ((build)); then
  command -v "$DOCKER" >/dev/null || die "docker not found"
  build_args=()
  if ((bake)); then
    model=$("$PYTHON" -c 'import sys; from deploy.config import get_args; print(get_args(sys.argv[1:]).model)' "${args[@]+"${args[@]}"}")
    say "fetching ImageNet weights of $model to bake into the image"
    "$PYTHON" -m deploy.weights --model "$model" --out docker/pretrained
    build_args+=(--build-arg PRETRAINED_DIR=docker/pretrained)
  fi
  # a single-platform Docker v2 image: SageMaker refuses an OCI index (BuildKit's attestations) and OCI manifests;
  # buildx without attestations where it is there, else the classic builder (docs/aws.md#images-sagemaker-accepts)
  if [[ "${DOCKER_BUILDKIT:-1}" != 0 ]] && "$DOCKER" buildx version >/dev/null 2>&1; then
    builder=(buildx build --provenance=false --sbom=false --load)
  else
    builder=(build)
    export DOCKER_BUILDKIT=0
  fi
  store=$("$DOCKER" info --format '{{.DriverStatus}}' 2>/dev/null || true)
  if [[ "$store" == *containerd.snapshotter* ]]; then
    say "warning: Docker's containerd image store is on: it pushes OCI manifests, which SageMaker refuses;" \
      "turn it off (Docker Desktop: Settings > General > 'Use containerd for pulling and storing images') and rebuild" \
      "(the manifest check after the push stops the run otherwise)"
  fi
  if [[ -n "$compat_arg" ]]; then
    build_args+=(--build-arg "$compat_arg")
    say "GPU batch transform: building with NVIDIA's CUDA forward-compatibility libraries ($compat_arg)"
  fi
  say "building $local_image for $platform (docker ${builder[*]})"
  "$DOCKER" "${builder[@]}" --platform "$platform" "${build_args[@]+"${build_args[@]}"}" -t "$local_image" .
else
  command -v "$DOCKER" >/dev/null || die "docker not found"
  built_for=$("$DOCKER" image inspect --format '{{.Os}}/{{.Architecture}}' "$local_image" 2>/dev/null) \
    || die "--skip-build: no local image $local_image"
  [[ "$built_for" == "$platform" ]] || die "$local_image is $built_for; SageMaker runs $platform images: rebuild without --skip-build"
  say "reusing $local_image ($built_for)"
fi

# 3. ECR: repository (lifecycle policy), a tag of this build's own, login, push; the jobs get the
#    pushed digest, never the tag (skipped in a dry run: nothing is sent)
if ((!dry_run)); then
  target=$("$PYTHON" -m deploy.ecr repository "${args[@]+"${args[@]}"}") || die "no repository to push to (see above)"
  registry=$("$PYTHON" -m deploy.ecr registry "${args[@]+"${args[@]}"}")
  say "logging in to $registry"
  "$PYTHON" -m deploy.ecr password "${args[@]+"${args[@]}"}" | "$DOCKER" login --username AWS --password-stdin "$registry" >/dev/null
  say "pushing $target"
  "$DOCKER" tag "$local_image" "$target"
  "$DOCKER" push "$target"
  # awk reads to the end (no early exit): a reader that stops early kills the writer with SIGPIPE under pipefail
  digest=$("$DOCKER" image inspect --format '{{range .RepoDigests}}{{println .}}{{end}}' "$target" \
    | awk -v repo="${target%:*}@" 'index($0, repo) == 1 && !found { print; found = 1 }')
  [[ -n "$digest" ]] || die "docker reported no digest for $target"
  say "pushed $digest"
  # the manifest of that exact digest, read back: only a Docker v2 manifest reaches a job or a model
  "$PYTHON" -m deploy.manifest "$digest" "${args[@]+"${args[@]}"}" \
    || die "SageMaker cannot pull $digest (the reason and the fix above); nothing was created"
  args+=(--set "image_uri=$digest")
fi

# 4. the pipeline
if ((push_only)); then
  if ((dry_run)); then say "dry run: nothing pushed; pipeline skipped (--push-only)"; else say "pushed; pipeline skipped (--push-only)"; fi
  exit 0
fi
exec "$PYTHON" -m deploy.pipeline all "${args[@]+"${args[@]}"}"
