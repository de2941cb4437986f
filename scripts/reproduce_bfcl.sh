#!/usr/bin/env bash
# BFCL's results table on this machine: SmolLM2-135M-Instruct with LoRA (configs/lm_bfcl.toml).
# One warm start alone (env.rounds = 0: its weights are the step-0 checkpoint), then each RL run
# starts from those same weights (policy.init, no warm start of its own): AsymRE with δV = −0.1,
# with δV = +0.1, and GRPO, serial, one seed. Each run and model is judged by `asymre bfcl` on the
# held-out non-live tasks (370) and, for AsymRE −0.1, on up to 200 tasks of each live category.
# Runs go under runs/bfcl_*, judgements under bfcl/*; docs/bfcl_curves.png is redrawn.
# About 2 hours on a 2-core CPU (warm start 36 min, each RL run 13–15 min, each non-live judge
# 8–10 min, the AsymRE one with the live categories longer).
# SEED=1 (etc.) repeats it with another seed into runs/bfcl_s1_* and bfcl/s1_*.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${ASYMRE:-}
if [ -z "$bin" ]; then
    make -s build >/dev/null
    bin=./target/release/asymre
fi
seed=${SEED:-0}
tag=$([ "$seed" = 0 ] && echo "" || echo "s${seed}_")
nonlive=simple_python,multiple,parallel,parallel_multiple,irrelevance
cfg=configs/lm_bfcl.toml

"$bin" train --config $cfg --serial --set seed=$seed --set env.rounds=0 --out runs/bfcl_${tag}warm
weights=$(ls -d runs/bfcl_${tag}warm/checkpoints/*/ | tail -1)weights.safetensors
from_warm=(--set seed=$seed --set policy.init=$weights --set warmstart.steps=0)
"$bin" train --config $cfg --serial "${from_warm[@]}" --out runs/bfcl_${tag}asymre
"$bin" train --config $cfg --serial "${from_warm[@]}" --set loss.baseline.delta_v=0.1 \
    --out runs/bfcl_${tag}asymre_plus
"$bin" train --config $cfg --serial "${from_warm[@]}" --set loss.kind=grpo --out runs/bfcl_${tag}grpo

judge() { "$bin" bfcl "$1" --max-new-tokens 320 --out "bfcl/$2" "${@:3}"; }
judge runs/bfcl_${tag}asymre ${tag}asymre --limit 200
judge runs/bfcl_${tag}warm ${tag}warm --categories $nonlive
judge runs/bfcl_${tag}asymre_plus ${tag}asymre_plus --categories $nonlive
judge runs/bfcl_${tag}grpo ${tag}grpo --categories $nonlive
"$bin" plot runs/bfcl_${tag}asymre runs/bfcl_${tag}asymre_plus runs/bfcl_${tag}grpo \
    --out docs/bfcl_curves.png \
    --title "BFCL non-live, SmolLM2-135M LoRA: AsymRE δV −0.1 / +0.1, GRPO, from one warm start" >/dev/null
