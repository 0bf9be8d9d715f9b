#!/usr/bin/env bash
# The GPU checks in one script, for the first machine with an NVIDIA GPU this project meets:
#   tests/gpu/run.sh [OUT_DIR [--sections host,tests,...]]   # from the repository root; figures in OUT_DIR/gpu.json (default gpu-results/)
#
# No Docker needed. Python: the repository's .venv (make venv), else a new .venv-gpu on top of this
# machine's python3 with the locks installed, or, offline, with its own torch and the missing
# packages from wheels in .whl/ (gpu.json records which torch ran). The sections, each with its
# own time limit (8 minutes in all): host facts, the gpu-marked tests, a short fine-tune on CUDA
# (bf16, channels_last), serve on CUDA under load, the GPU benchmark sections. Without Java,
# multi-model-server cannot start: the serve section is then skipped and gpu.json says so.
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 1
out=${1:-gpu-results}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1

python=.venv/bin/python
if ! { [[ -x $python ]] && $python -c 'import torch, image_classifier' 2>/dev/null; }; then
  # a venv on top of this machine's Python (its CUDA torch too, where it has one), then the locks;
  # offline (no PyPI), the packages the machine lacks come as wheels from .whl/
  python=.venv-gpu/bin/python
  [[ -x $python ]] || python3 -m venv --system-site-packages .venv-gpu || exit 1
  if ! $python -c 'import torch' 2>/dev/null && python3 -c 'import torch' 2>/dev/null; then
    # python3 is itself a virtual environment (its packages are not the "system" ones): see them through a .pth
    python3 -c 'import site; print("\n".join(site.getsitepackages()))' >"$($python -c 'import site; print(site.getsitepackages()[0])')/host-python.pth"
  fi
  if ! timeout 900 $python -m pip install -q --retries 1 --timeout 15 -r docker/requirements.lock -r tests/requirements.lock >"$out/pip.log" 2>&1; then
    echo "the locks could not be installed (offline?): using this machine's packages and .whl/ (see $out/pip.log)" >&2
    if compgen -G ".whl/*.whl" >/dev/null; then
      $python -m pip install -q --no-index --no-deps --no-compile .whl/*.whl >>"$out/pip.log" 2>&1 || exit 1
    fi
  fi
  # (offline, with a setuptools the editable install refuses, PYTHONPATH=container/src does the same)
  $python -m pip install -q --no-deps --no-build-isolation -e container/ >>"$out/pip.log" 2>&1 || $python -c 'import image_classifier' || exit 1
fi
PATH="$(dirname "$python"):$PATH"
export PATH
exec "$python" -m tests.gpu.device_check --out "$out" "${@:2}"
