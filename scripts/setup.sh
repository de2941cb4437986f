#!/usr/bin/env bash
# Installs what the build needs on a fresh machine, idempotently:
#   .venv/         a project-local Python environment with PyTorch 2.11.0 (libtorch for tch 0.24)
#   .libtorch      a python-version-free symlink to the torch package, read by .cargo/config.toml
# Re-running it when everything is present costs a second.
set -euo pipefail
cd "$(dirname "$0")/.."

TORCH_VERSION=2.11.0
PY=${PYTHON:-python3}

have_torch() {
    [ -x .venv/bin/python ] &&
        .venv/bin/python -c "import torch,sys; sys.exit(0 if torch.__version__.split('+')[0]=='$TORCH_VERSION' else 1)" 2>/dev/null
}

if ! command -v cargo >/dev/null 2>&1; then
    echo "setup: cargo not found; install a Rust toolchain (rustup) first" >&2
    exit 1
fi

if ! have_torch; then
    echo "setup: installing PyTorch $TORCH_VERSION into .venv (about a minute, ~5 GB)" >&2
    [ -x .venv/bin/python ] || "$PY" -m venv .venv
    .venv/bin/python -m pip install --quiet --disable-pip-version-check "torch==$TORCH_VERSION"
    have_torch || { echo "setup: PyTorch $TORCH_VERSION did not install into .venv" >&2; exit 1; }
fi

torch_dir=$(.venv/bin/python -c "import torch,os;print(os.path.relpath(os.path.dirname(torch.__file__)))" 2>/dev/null)
if [ "$(readlink .libtorch 2>/dev/null)" != "$torch_dir" ]; then
    ln -sfn "$torch_dir" .libtorch
fi
