#!/usr/bin/env bash
# LibTorch for stab-burn's `tch` feature, set up from the Python package registry.
#
#   scripts/libtorch.sh setup          create (or reuse) the environment, then print what it holds
#   scripts/libtorch.sh run CMD ARGS…  set up if needed, then run CMD with the build and run-time
#                                      variables burn-tch needs (e.g. `run cargo test …`)
#   scripts/libtorch.sh env            print those variables as `export` lines
#   scripts/libtorch.sh present        exit 0 when the environment holds torch 2.9.0, else 1
#
# burn-tch 0.22.1 builds against torch-sys 0.22.0, which expects LibTorch 2.9.0. No machine here
# reaches download.pytorch.org (torch-sys's `download-libtorch`, or the CPU-only wheel), but PyPI
# serves `torch==2.9.0`: its manylinux wheel carries LibTorch's headers and shared libraries.
# torch-sys finds them through `LIBTORCH_USE_PYTORCH=1` and the `python3` of the active
# `VIRTUAL_ENV`. Its link sets no rpath, so binaries need `torch/lib` on `LD_LIBRARY_PATH`; the
# libraries' own rpath finds the CUDA libraries of the `nvidia-*` wheels beside them.
#
# The CUDA wheels cannot be left out, even for the CPU: PyPI's linux wheel is the CUDA build, and
# its `libtorch_cpu.so` itself needs `libcudart.so.12` and `libcupti.so.12`, while `libtorch.so`
# (which torch-sys always links) needs `libtorch_cuda.so` and through it cuBLAS, cuDNN, NCCL,
# cuFFT, cuSPARSE, cuRAND and cuFile. No GPU is needed at run time: `BURN_DEVICE=tch` is the CPU.
#
# The environment lives outside the clone ($STAB_LIBTORCH_VENV, default
# ~/.cache/stab-torch-venv), so a fresh clone or `cargo clean` keeps it; an environment that
# already holds torch 2.9.0 is reused as it is. Measured sizes and times: docs/TESTING.md,
# "LibTorch".
set -euo pipefail

TORCH_VERSION=2.9.0
VENV="${STAB_LIBTORCH_VENV:-$HOME/.cache/stab-torch-venv}"
PYTHON="${STAB_LIBTORCH_PYTHON:-python3}"

usage() {
  sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
}

# Whether $VENV holds torch $TORCH_VERSION that imports.
present() {
  [ -x "$VENV/bin/python" ] &&
    "$VENV/bin/python" -c "import sys, torch; sys.exit(0 if torch.__version__.split('+')[0] == '$TORCH_VERSION' else 1)" \
      >/dev/null 2>&1
}

setup() {
  if present; then
    echo "LibTorch $TORCH_VERSION: reusing $VENV" >&2
    return
  fi
  echo "LibTorch $TORCH_VERSION: installing torch==$TORCH_VERSION into $VENV (a few GB from PyPI)" >&2
  [ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "torch==$TORCH_VERSION"
  if ! present; then
    echo "torch $TORCH_VERSION does not import from $VENV after the install" >&2
    exit 1
  fi
}

torch_lib() {
  # (torch warns on stderr that NumPy is missing: LibTorch does not need it.)
  "$VENV/bin/python" -c "import os, torch; print(os.path.join(os.path.dirname(torch.__file__), 'lib'))" 2>/dev/null
}

env_lines() {
  local lib
  lib="$(torch_lib)"
  printf 'export VIRTUAL_ENV=%q\n' "$VENV"
  printf 'export PATH=%q:"$PATH"\n' "$VENV/bin"
  printf 'export LIBTORCH_USE_PYTORCH=1\n'
  printf 'export LD_LIBRARY_PATH=%q"${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"\n' "$lib"
}

case "${1:-}" in
  setup)
    setup
    echo "torch/lib: $(torch_lib)" >&2
    du -sh "$VENV" >&2
    ;;
  env)
    present || { echo "no LibTorch in $VENV: run 'scripts/libtorch.sh setup' first" >&2; exit 1; }
    env_lines
    ;;
  present)
    if present; then
      echo "LibTorch $TORCH_VERSION: present in $VENV" >&2
    else
      echo "LibTorch $TORCH_VERSION: not present in $VENV ('scripts/libtorch.sh setup' installs it)" >&2
      exit 1
    fi
    ;;
  run)
    shift
    [ $# -gt 0 ] || usage
    setup
    eval "$(env_lines)"
    exec "$@"
    ;;
  *) usage ;;
esac
