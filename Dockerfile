# vcell for GPU clusters (KubeRay, Ray cluster launcher, Slurm through Apptainer/Enroot).
# Written for Ray 2.60.0 (the base image), Python 3.11, CUDA 12.8. The pins below must equal
# pyproject.toml's tested versions (and the Makefile's torch): tests/test_dockerfile.py checks it.
#
#   docker build -t vcell:0.1.0 .
#   docker run --rm vcell:0.1.0 vcell models           # tini is PID 1: `ray stop` leaves no zombies
#
# Kubernetes replaces the image's entrypoint with the pod's command; the KubeRay manifests in
# cluster/kuberay/ set `shareProcessNamespace: true` so the pod's pause process reaps instead.
FROM rayproject/ray:2.60.0-py311-cu128

ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX=https://download.pytorch.org/whl/cu128
ARG DEEPSPEED_VERSION=0.19.8
ARG LIGHTNING_VERSION=2.6.6
# GPUs the prebuilt DeepSpeed ops are compiled for: A100 (8.0), A10/L4-class (8.6, 8.9), H100/H200 (9.0)
ARG TORCH_CUDA_ARCH_LIST="8.0;8.6;8.9;9.0"

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

USER 0
# tini: an init that reaps zombies; build-essential: compiles DeepSpeed's CPU Adam (ZeRO-offload)
RUN apt-get update \
    && apt-get install -y --no-install-recommends tini=0.19.0-1 build-essential=12.9ubuntu3 \
    && rm -rf /var/lib/apt/lists/*

# the base image's unprivileged user `ray` (uid 1000, group users = 100)
USER 1000
WORKDIR /home/ray
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1

RUN pip install --no-cache-dir "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX}"
# ZeRO-offload's CPU Adam prebuilt into the wheel (no JIT compile on first use in every pod)
RUN DS_BUILD_CPU_ADAM=1 DS_BUILD_UTILS=1 TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST}" \
    pip install --no-cache-dir --no-build-isolation "deepspeed==${DEEPSPEED_VERSION}" \
    && python -c "from deepspeed.ops.op_builder import CPUAdamBuilder; assert CPUAdamBuilder().is_compatible()"
RUN pip install --no-cache-dir "pytorch-lightning==${LIGHTNING_VERSION}"

# the package itself, non-editable: configs/ and cluster/ ship inside it (setup.py)
COPY --chown=1000:100 pyproject.toml setup.py README.md /home/ray/vcell-src/
COPY --chown=1000:100 vcell /home/ray/vcell-src/vcell
COPY --chown=1000:100 configs /home/ray/vcell-src/configs
COPY --chown=1000:100 cluster /home/ray/vcell-src/cluster
RUN pip install --no-cache-dir "/home/ray/vcell-src[cluster]" \
    && rm -rf /home/ray/vcell-src \
    && vcell models > /dev/null

ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["bash"]
