# One image for SageMaker training and serving (bring your own container).
#   docker build -t image-classifier:local .
#   docker run --rm -v "$PWD/local/opt_ml:/opt/ml" image-classifier:local train
#   docker run --rm -p 8080:8080 -v "$PWD/local/opt_ml:/opt/ml" image-classifier:local serve
#
# GPU: the PyPI torch wheel (the pin in docker/requirements.lock) is a CUDA 13 build that brings
# its own CUDA libraries; it needs an NVIDIA driver >= 580 on the host (docs/image.md, "GPU drivers":
# which SageMaker hosts have it). CUDA_COMPAT_IMAGE=<an NVIDIA CUDA 13 base image> also copies
# NVIDIA's forward-compatibility libraries in, which the entrypoint selects on older drivers of
# data-center GPUs. TORCH_INDEX_URL picks another torch build, e.g. https://download.pytorch.org/whl/cpu
# for a CPU-only image of ~1.5 GB instead of ~7 GB.
#
# Targets: the default (last) stage is the production image. `local` adds the built-in sample
# (Fashion-MNIST photos + EfficientNet-Lite0 weights, ~20 MB) that `docker compose up` trains on.
ARG BASE_IMAGE=python:3.11-slim-bookworm
ARG CUDA_COMPAT_IMAGE=${BASE_IMAGE}

FROM ${BASE_IMAGE} AS builder
ARG PIP_FIND_LINKS=""
ARG TORCH_INDEX_URL=""
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
# smdebug and sagemaker-training compile small C extensions: compilers live in this stage only
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc g++ libc6-dev \
 && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
COPY docker/requirements.lock /tmp/requirements.lock
RUN pip install ${PIP_FIND_LINKS:+--find-links "$PIP_FIND_LINKS"} ${TORCH_INDEX_URL:+--extra-index-url "$TORCH_INDEX_URL"} \
        -r /tmp/requirements.lock \
 && pip check
# after the lock, so that our `train` console script replaces sagemaker-training's (script mode runs through ours)
COPY container/ /tmp/container/
RUN pip install --no-deps /tmp/container && rm -rf /tmp/container

# NVIDIA's CUDA forward-compatibility libraries, where CUDA_COMPAT_IMAGE is an NVIDIA CUDA base
# image (they live in /usr/local/cuda/compat there); an empty folder otherwise.
FROM ${CUDA_COMPAT_IMAGE} AS cuda-compat
RUN mkdir -p /usr/local/cuda/compat

FROM ${BASE_IMAGE} AS runtime
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="image-classifier" \
      org.opencontainers.image.description="Fine-tune and serve image classifiers on Amazon SageMaker (train, serve)" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      com.amazonaws.sagemaker.capabilities.multi-models="true" \
      com.amazonaws.sagemaker.capabilities.accept-bind-to-port="true"
# multi-model-server is Java. No C/C++ compiler in the final image: torch.compile (compile=true)
# fails with a clear reason here; build from the builder stage if you need it.
RUN apt-get update \
 && apt-get install -y --no-install-recommends openjdk-17-jre-headless curl \
 && rm -rf /var/lib/apt/lists/*
COPY --from=builder /opt/venv /opt/venv
COPY --from=cuda-compat /usr/local/cuda/compat/ /usr/local/cuda/compat/
# Weights baked in at build time (network isolation, no pretrained channel needed): the
# build-context folder PRETRAINED_DIR holds <model>.safetensors files (deploy/ fills it for ResNet-50).
ARG PRETRAINED_DIR=docker/pretrained
COPY ${PRETRAINED_DIR}/ /opt/pretrained/
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    IMAGE_CLASSIFIER_PRETRAINED_DIR=/opt/pretrained \
    HF_HUB_OFFLINE=1 \
    MPLCONFIGDIR=/tmp/matplotlib
WORKDIR /opt/ml
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --start-period=120s CMD ["curl", "-fsS", "http://127.0.0.1:8080/ping"]
# SageMaker runs `docker run IMAGE train` or `docker run IMAGE serve`: the entrypoint chooses the
# CUDA libraries for the host's driver, then execs the command (train and serve are on PATH).
ENTRYPOINT ["python", "-m", "image_classifier.entry"]
CMD ["serve"]

# --- the built-in sample of `docker compose up` (target `local`); never in the production image ---
FROM builder AS sample
ARG PIP_FIND_LINKS=""
RUN apt-get update \
 && apt-get install -y --no-install-recommends dataset-fashion-mnist \
 && rm -rf /var/lib/apt/lists/*
COPY docker/sample-requirements.txt /tmp/sample-requirements.txt
RUN pip install ${PIP_FIND_LINKS:+--find-links "$PIP_FIND_LINKS"} -r /tmp/sample-requirements.txt
COPY local/__init__.py local/sample_data.py local/convert_weights.py /tmp/sample/local/
WORKDIR /tmp/sample
RUN python -m local.sample_data builtin --out /opt/sample

FROM runtime AS local
COPY --from=sample /opt/sample /opt/sample

# the default target: the production image
FROM runtime
