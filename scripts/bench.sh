#!/usr/bin/env bash
# The benchmarks: `asymre bench` (throughput against the PyTorch baseline, one table), then the
# memory soak (ASYMRE_SOAK_SECS seconds, 600 by default). Pass --quick for a short bench and a
# 60-second soak.
# `scripts/bench.sh --trl [--quick] [--workloads …] [--contention]` instead runs the GRPO
# workloads against Hugging Face TRL (`asymre bench --lm --trl`), installing trl==1.16.0 into
# .venv first when it is missing. `scripts/bench.sh --llamacpp` sets asymre's decoding beside
# llama.cpp's on the same GGUF files (scripts/llamacpp_bench.sh; builds llama.cpp once).
set -euo pipefail
cd "$(dirname "$0")/.."
make -s build >/dev/null
if [[ "${1:-}" == "--llamacpp" ]]; then
    shift
    exec scripts/llamacpp_bench.sh "$@"
fi
if [[ "${1:-}" == "--trl" ]]; then
    shift
    if ! .venv/bin/python -c 'import trl' 2>/dev/null; then
        echo "installing trl==1.16.0 into .venv"
        .venv/bin/pip install -q trl==1.16.0
    fi
    exec ./target/release/asymre bench --lm --trl "$@" --json "${BENCH_JSON:-/dev/null}"
fi
quick=()
if [[ "${1:-}" == "--quick" ]]; then
    quick=(--quick)
    : "${ASYMRE_SOAK_SECS:=60}"
fi
./target/release/asymre bench "${quick[@]}" --json "${BENCH_JSON:-/dev/null}"
echo
echo "soak: fast actors, slow learner, ${ASYMRE_SOAK_SECS:=600} s"
ASYMRE_SOAK_SECS=$ASYMRE_SOAK_SECS cargo test --release --test faults -- --ignored soak_fast --nocapture 2>&1 \
    | grep -E '^(soak|  t |test result)'
