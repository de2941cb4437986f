#!/usr/bin/env bash
# CUDA checks of the pretrained LM, a few minutes on one GPU (nothing else in the project needs
# one): greedy tokens on CUDA against the CPU's (f32, then bf16 weights), decoding tokens/s and the
# learner step on CUDA in f32 and bf16, a short lm_calc run with actor and learner on CUDA, and a
# tiny tool-use run of the small transformer on CUDA. Every stage runs; the failed ones are named
# at the end (exit 1).
#
#   MODEL=smollm2-135m scripts/gpu_check.sh      # a name, a .gguf file or a Hugging Face directory
#
# Needs the release binary (BIN, default target/release/asymre) and libtorch with CUDA on
# LD_LIBRARY_PATH, e.g. LD_LIBRARY_PATH=$(python3 -c 'import torch,os;print(os.path.dirname(torch.__file__))')/lib
set -uo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-./target/release/asymre}
MODEL=${MODEL:-smollm2-135m}
PROMPT="What is the capital of France? Answer in one sentence."
export PYTHONDONTWRITEBYTECODE=1 RUST_BACKTRACE=1
failed=()
stage() { echo "== $1"; }
fail() { echo "FAILED: $1"; failed+=("$1"); }

command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total --format=csv,noheader

gen() { "$BIN" generate --model "$MODEL" --chat --prompt "$PROMPT" --max-new 32 --json "$@"; }
stage "greedy tokens"
cpu=$(gen --device cpu) || fail "generate on cpu"
echo "cpu f32:   $cpu"
for precision in f32 bf16; do
    if cuda=$(gen --device cuda --precision "$precision"); then
        echo "cuda $precision: $cuda"
        python3 - "$cpu" "$cuda" "$precision" <<'PY'
import json, sys
a, b = (json.loads(x)["output_tokens"] for x in sys.argv[1:3])
same = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
print(f"greedy tokens, cuda {sys.argv[3]} against cpu f32: first {same} of {len(a)} equal")
PY
    else
        fail "generate on cuda, $precision"
    fi
done

for precision in f32 bf16; do
    stage "bench --lm, cuda, $precision"
    "$BIN" bench --lm --model "$MODEL" --device cuda --precision "$precision" --seconds 10 --no-baseline ||
        fail "bench --lm on cuda, $precision"
done

# A short lm_calc run with the actor and the learner on CUDA in bf16 (LoRA, a 2-step warm start, 10
# AsymRE steps, no evaluation): episodes/s from its metrics. The learner's share of the GPU's bf16
# rate is the bench's "learner step: GFLOP/s" row above (bf16) against its matmul row.
stage "lm_calc on cuda, bf16"
run=$(mktemp -d)/lm_calc_cuda
if "$BIN" train --config configs/lm_calc.toml --out "$run" --set policy.model="$MODEL" \
    --set device=cuda --set actor.device=cuda --set policy.precision=bf16 \
    --set warmstart.steps=2 --set env.rounds=1 --set env.steps_per_round=10 \
    --set logging.eval_every=0 --set logging.eval_episodes=32 --set checkpoint.every=0; then
    python3 - "$run/metrics.jsonl" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if '"loss"' in l]
dt = rows[-1]["wall_time"] - rows[0]["wall_time"]
steps = rows[-1]["step"] - rows[0]["step"]
print(f"lm_calc on CUDA (bf16): {steps} steps of 16 episodes in {dt:.1f} s: {16 * steps / dt:.2f} episodes/s, "
      f"batch reward {rows[-1]['batch_reward']:.3f}")
PY
else
    fail "lm_calc on cuda"
fi

# The small transformer's tool-use run, learner and actor on CUDA, serial (40 steps).
stage "tool_calc on cuda, serial"
"$BIN" train --config configs/tool_calc.toml --out "$(mktemp -d)/tool_calc_cuda" --serial \
    --set device=cuda --set actor.device=cuda --set env.rounds=2 --set env.steps_per_round=20 \
    --set warmstart.steps=20 --set logging.eval_episodes=50 || fail "tool_calc on cuda"

if [ ${#failed[@]} -gt 0 ]; then
    echo "failed stages: ${failed[*]}"
    exit 1
fi
echo "all stages passed"
