#!/usr/bin/env bash
# BFCL's multi-turn table on this machine: SmolLM2-135M-Instruct with LoRA
# (configs/lm_bfcl_multi.toml). The model as is, after a warm start alone (env.rounds = 0: its
# weights are the step-0 checkpoint), and after AsymRE from those weights (policy.init, no warm
# start of its own), each judged by `asymre bfcl` on LIMIT (default 16) held-out tasks of
# multi_turn_base. Serial, one seed. Runs go under runs/bfcl_multi_*, judgements under bfcl/multi_*.
# About 1.5 hours on a 2-core CPU. SEED=1 (etc.) repeats it with another seed.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/asymre_bin.sh
seed=${SEED:-0}
limit=${LIMIT:-16}
tag=$([ "$seed" = 0 ] && echo "" || echo "s${seed}_")
cfg=configs/lm_bfcl_multi.toml
judge=(--categories multi_turn_base --limit "$limit" --max-tokens 4096 --max-new-tokens 160 --batch 8)

"$bin" train --config $cfg --serial --set seed=$seed --set env.rounds=0 --out runs/bfcl_multi_${tag}warm
weights=$(ls -d runs/bfcl_multi_${tag}warm/checkpoints/*/ | tail -1)weights.safetensors
"$bin" train --config $cfg --serial --set seed=$seed --set policy.init=$weights \
    --set warmstart.steps=0 --out runs/bfcl_multi_${tag}asymre
[ -n "$tag" ] || "$bin" bfcl --model smollm2-135m "${judge[@]}" --out bfcl/multi_as_is
"$bin" bfcl runs/bfcl_multi_${tag}warm "${judge[@]}" --out bfcl/multi_${tag}warm
"$bin" bfcl runs/bfcl_multi_${tag}asymre "${judge[@]}" --out bfcl/multi_${tag}asymre
