# One image for SageMaker training and serving (bring your own container).
#   docker build -t image-classifier .
#   docker run --rm -v "$PWD/local/opt_ml:/opt/ml" image-classifier train
#   docker run --rm -p 8080:8080 -v "$PWD/local/opt_ml:/opt/ml" image-classifier serve
#
# The PyPI torch wheel (the pin in docker/requirements.lock) is a CUDA 13 build that brings its
# own CUDA libraries: on a GPU host it needs only the NVIDIA driver (>= 580) and the NVIDIA
# container toolkit (`docker run --gpus all`). TORCH_INDEX_URL picks another build, e.g.
# https://download.pytorch.org/whl/cpu for a CPU-only image of ~1.5 GB instead of ~6.5 GB.
ARG BASE_IMAGE=python:3.11-slim-bookworm

FROM ${BASE_IMAGE} AS builder
ARG PIP_FIND_LINKS=""
ARG TORCH_INDEX_URL=""
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
# smdebug compiles a small C extension: compilers live in this stage only
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc g++ libc6-dev \
 && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
COPY docker/requirements.lock /tmp/requirements.lock
RUN pip install ${PIP_FIND_LINKS:+--find-links "$PIP_FIND_LINKS"} ${TORCH_INDEX_URL:+--extra-index-url "$TORCH_INDEX_URL"} \
        -r /tmp/requirements.lock \
 && pip check
COPY container/ /tmp/container/
RUN pip install --no-deps /tmp/container && rm -rf /tmp/container

FROM ${BASE_IMAGE}
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
# SageMaker runs `docker run IMAGE train` or `docker run IMAGE serve`: both are on PATH.
CMD ["serve"]
