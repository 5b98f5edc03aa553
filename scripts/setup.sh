#!/usr/bin/env bash
# Installs what rlhf-control needs on a fresh Debian machine (run as root or with sudo rights).
#   scripts/setup.sh          the framework (PyTorch CPU 2.13.0 first, then the package)
#   scripts/setup.sh --dev    also the test tools: Chromium for the browser tests, pytest, Playwright, Ray
set -euo pipefail
cd "$(dirname "$0")/.."
DEV=0
[[ "${1:-}" == "--dev" ]] && DEV=1

SUDO=""
[[ $(id -u) -ne 0 ]] && SUDO="sudo"
# GL libraries for headless MuJoCo rendering (EGL / OSMesa), ffmpeg comes with imageio-ffmpeg.
PKGS=(libegl1 libgl1 libglx-mesa0 libgl1-mesa-dri libosmesa6 libgles2)
[[ $DEV -eq 1 ]] && PKGS+=(chromium fonts-dejavu-core)
missing=()
for p in "${PKGS[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [[ ${#missing[@]} -gt 0 ]]; then
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

PY=${PYTHON:-python3}
# torch first, pinned: a range asked before torch is installed would pull a multi-GB CUDA build.
$PY -c "import torch" 2>/dev/null || $PY -m pip install -q torch==2.13.0
# MuJoCo 4 comes as three packages sharing the mujoco/ folder; dm-control needs MuJoCo 3 (pinned in
# pyproject.toml), so a MuJoCo 4 install goes first, whole, rather than being overwritten piecemeal.
if $PY -m pip show -q mujoco-core >/dev/null 2>&1; then
  $PY -m pip uninstall -q -y mujoco mujoco-core mujoco-studio
fi
if [[ $DEV -eq 1 ]]; then
  $PY -m pip install -q -e ".[dev]"
else
  $PY -m pip install -q -e .
fi
command -v pyenv >/dev/null 2>&1 && pyenv rehash || true
