# syntax=docker/dockerfile:1.7
#
# shelf-stream gateway images.
#
#   docker build --target cpu -t shelf-stream:cpu .
#   docker build --target gpu -t shelf-stream:gpu .
#
#   docker run -p 8765:8765 shelf-stream:cpu      (the packaged YOLOX-Nano)
#   docker run -p 8765:8765 -v $PWD/models:/models:ro shelf-stream:cpu   (your model)
#   docker run --gpus all -p 8765:8765 -v $PWD/models:/models:ro \
#              -v shelf-engines:/cache shelf-stream:gpu
#
# The GPU image builds the TensorRT engine for the GPU it finds on first start (a few
# minutes; engine.trt_build caches it under $XDG_CACHE_HOME/shelf-stream/models/engines)
# and reuses it from the /cache volume afterwards. See deploy/README.md.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm
# 24.10 and later are Ubuntu 24.04 with Python 3.12 (shelf-stream needs >= 3.11);
# 24.12 has TensorRT 10.7 (builder-flag precision) on CUDA 12.6. CUDA_MAJOR must be the
# base's CUDA major: it picks the cuda-cuXX extra (cuda-python of that major), and the
# build checks that it got it. A CUDA 12 image runs on CUDA 12 and 13 drivers (R525+).
ARG TENSORRT_IMAGE=nvcr.io/nvidia/tensorrt:24.12-py3
ARG CUDA_MAJOR=12

# ----------------------------------------------------------------------- cpu
FROM ${PYTHON_IMAGE} AS cpu

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    XDG_CACHE_HOME=/cache \
    SHELF_STREAM_BACKEND=onnxruntime \
    SHELF_STREAM_PORT=8765

# A fixed, unprivileged uid so that volume ownership is predictable (chown 10001).
RUN groupadd --system --gid 10001 shelf \
 && useradd --system --uid 10001 --gid shelf --home-dir /home/shelf --create-home shelf \
 && mkdir -p /models /cache \
 && chown shelf:shelf /cache

WORKDIR /opt/shelf-stream
# Metadata first: the dependency layer is rebuilt only when pyproject.toml changes.
COPY pyproject.toml README.md ./
COPY shelf_stream ./shelf_stream
# The triton extra lets the same image run as a gateway in front of Triton.
RUN pip install ".[triton]"

COPY --chmod=0755 docker/entrypoint.sh /usr/local/bin/shelf-stream-entrypoint

USER shelf
EXPOSE 8765
VOLUME ["/cache"]
# GET /healthz on the serving port (JSON: streams, model, frames inferred). Python,
# not curl: the slim image has no curl. The start period covers the model load.
HEALTHCHECK --interval=15s --timeout=3s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('SHELF_STREAM_PORT', '8765'), timeout=2)"]
ENTRYPOINT ["shelf-stream-entrypoint"]
CMD []

# ----------------------------------------------------------------------- gpu
FROM ${TENSORRT_IMAGE} AS gpu
ARG CUDA_MAJOR

# NVIDIA_DRIVER_CAPABILITIES: the NVIDIA Container Toolkit mounts only the driver
# libraries of the listed capabilities; NVDEC (libnvcuvid) comes with "video". Without
# it FFmpeg's CUDA decoder opens and then fails its first frame.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    XDG_CACHE_HOME=/cache \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility,video \
    SHELF_STREAM_BACKEND=tensorrt \
    SHELF_STREAM_PORT=8765

RUN groupadd --system --gid 10001 shelf \
 && useradd --system --uid 10001 --gid shelf --home-dir /home/shelf --create-home shelf \
 && mkdir -p /models /cache \
 && chown shelf:shelf /cache

WORKDIR /opt/shelf-stream
COPY pyproject.toml README.md ./
COPY shelf_stream ./shelf_stream
# The image's own TensorRT bindings must match its libnvinfer, so not the gpu-cuXX
# extra (which would add a tensorrt-cuXX wheel next to them): cuda-cuXX brings
# cuda-python of the base's CUDA major and the graph converters. The check fails the
# build if the packages are of another CUDA major. Ubuntu 24.04 marks the system Python
# externally managed: this image is the environment, so installing into it is intended.
RUN python3 -m pip install --break-system-packages ".[cuda-cu${CUDA_MAJOR},triton]" \
 && python3 -m shelf_stream.engine.cuda_compat --installed-for-cuda "${CUDA_MAJOR}" \
 && python3 -c "import tensorrt; print('TensorRT', tensorrt.__version__)"

COPY --chmod=0755 docker/entrypoint.sh /usr/local/bin/shelf-stream-entrypoint

USER shelf
EXPOSE 8765
VOLUME ["/cache"]
HEALTHCHECK --interval=15s --timeout=3s --start-period=600s --retries=3 \
    CMD ["python3", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('SHELF_STREAM_PORT', '8765'), timeout=2)"]
ENTRYPOINT ["shelf-stream-entrypoint"]
CMD []
