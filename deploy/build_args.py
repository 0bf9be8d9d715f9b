"""The image variant a configuration needs: NVIDIA's CUDA forward-compatibility libraries for a GPU batch transform.

    python -m deploy.build_args [configuration arguments]   # prints CUDA_COMPAT_IMAGE=<image>, or nothing

SageMaker's batch transform hosts run driver 470 or 535 (no 580 host image, ``deploy.gpu_hosts``),
where the image's CUDA 13 build runs only with NVIDIA's forward-compatibility libraries in the
image. ``push_and_train.sh`` asks this module before it builds: a configuration whose
``transform_instance_type`` is an NVIDIA GPU (or that says ``image_cuda_compat = true``) gets the
build argument that copies them from NVIDIA's public CUDA base image (which the user's Docker
pulls; CI never does: the container tier uses a local stand-in), and the run gets
``image_cuda_compat = true``. Other configurations build as before.
"""

from __future__ import annotations

import argparse
import sys

from deploy import config as config_module
from deploy import gpu_hosts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    config_module.add_arguments(parser)
    args, _ = parser.parse_known_args(argv)
    try:
        own = config_module.from_args(args)
    except config_module.ConfigError:  # e.g. a GPU transform without image_cuda_compat: what this build adds
        args.cfg_set = [*args.cfg_set, "image_cuda_compat=true"]
        try:
            own = config_module.from_args(args).model_copy(update={"image_cuda_compat": False})
        except config_module.ConfigError:
            return 0  # the configuration check that follows says what is wrong
    if own.image_cuda_compat or gpu_hosts.is_nvidia(own.transform_instance_type):
        print(f"CUDA_COMPAT_IMAGE={gpu_hosts.CUDA_COMPAT_IMAGE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
