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
# ROUNDS=6 runs the three RL runs for 60 steps instead of 20 (held-out evaluations every 20 steps)
# into runs/bfcl_asymre60, bfcl_asymre60_plus, bfcl_grpo60 (and bfcl/ alike), about 40 min each
# with its judge; docs/bfcl_curves60.png. A finished warm start of the same seed is reused.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/asymre_bin.sh
seed=${SEED:-0}
tag=$([ "$seed" = 0 ] && echo "" || echo "s${seed}_")
nonlive=simple_python,multiple,parallel,parallel_multiple,irrelevance
cfg=configs/lm_bfcl.toml
rounds=${ROUNDS:-2}
if [ "$rounds" = 2 ]; then n=""; longer=(); else
    n=$((rounds * 10)); longer=(--set env.rounds=$rounds --set logging.eval_every=20); fi

if [ ! -f runs/bfcl_${tag}warm/summary.json ]; then
    "$bin" train --config $cfg --serial --set seed=$seed --set env.rounds=0 --out runs/bfcl_${tag}warm
fi
weights=$(ls -d runs/bfcl_${tag}warm/checkpoints/*/ | tail -1)weights.safetensors
from_warm=(--set seed=$seed --set policy.init=$weights --set warmstart.steps=0 "${longer[@]}")
"$bin" train --config $cfg --serial "${from_warm[@]}" --out runs/bfcl_${tag}asymre$n
"$bin" train --config $cfg --serial "${from_warm[@]}" --set loss.baseline.delta_v=0.1 \
    --out runs/bfcl_${tag}asymre${n}_plus
"$bin" train --config $cfg --serial "${from_warm[@]}" --set loss.kind=grpo --out runs/bfcl_${tag}grpo$n

judge() { "$bin" bfcl "$1" --max-new-tokens 320 --out "bfcl/$2" "${@:3}"; }
if [ -z "$n" ]; then
    judge runs/bfcl_${tag}asymre ${tag}asymre --limit 200
    [ -f bfcl/${tag}warm/summary.json ] || judge runs/bfcl_${tag}warm ${tag}warm --categories $nonlive
else
    judge runs/bfcl_${tag}asymre$n ${tag}asymre$n --categories $nonlive
fi
judge runs/bfcl_${tag}asymre${n}_plus ${tag}asymre${n}_plus --categories $nonlive
judge runs/bfcl_${tag}grpo$n ${tag}grpo$n --categories $nonlive
"$bin" plot runs/bfcl_${tag}asymre$n runs/bfcl_${tag}asymre${n}_plus runs/bfcl_${tag}grpo$n \
    --out docs/bfcl_curves$n.png \
    --title "BFCL non-live, SmolLM2-135M LoRA: AsymRE δV −0.1 / +0.1, GRPO, $((rounds * 10)) RL steps from one warm start" >/dev/null
