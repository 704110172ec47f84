#!/usr/bin/env bash
# For a GPU machine without internet access: run this on a machine with it, before copying the repository over.
# Fetches into .whl/ (ignored by git) the wheels such a machine's Python 3.12 image lacks. The image assumed has
# torch, triton, matplotlib, nvidia-ml-py, scipy, pytest, huggingface_hub and safetensors already; diffusers,
# importlib_metadata and torchsde (with trampoline), all pure Python, are missing.
# Copy .whl/ along with the repository; bench/gpu_check.sh installs them into /tmp/site first.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d .whl diffusers==0.42.1 importlib_metadata==10.2.0 \
  torchsde==0.2.6 trampoline==0.1.2
ls -la .whl
