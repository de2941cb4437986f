#!/usr/bin/env bash
# More training seeds of BFCL's 20-step RL rows (configs/lm_bfcl.toml), through `asymre sweep`:
# every run starts from the seed-0 warm start of scripts/reproduce_bfcl.sh (run that first), so
# the spread measured is the RL's alone (which prompts are drawn, what is sampled), not the warm
# start's. Seeds 1 and 2 (SEEDS=N seeds from FIRST=1) of AsymRE δV = −0.1 and +0.1
# (sweeps/bfcl_seeds) and of GRPO (sweeps/bfcl_grpo_seeds), each run then judged by `asymre bfcl`
# on the held-out non-live tasks into bfcl/seeds/<point>; scripts/reference/bfcl_seeds_table.py
# prints mean ± std over seed 0's runs and these.
# About 20 minutes per run and its judge on a 2-core CPU (2 hours for the six).
# Started again, the sweeps run only what is missing and finished judges are kept.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/asymre_bin.sh
weights=$(ls -d runs/bfcl_warm/checkpoints/*/ 2>/dev/null | tail -1 || true)weights.safetensors
if [ ! -f "$weights" ]; then
    echo "error: no seed-0 warm start in runs/bfcl_warm: run scripts/reproduce_bfcl.sh first" >&2
    exit 2
fi
seeds=${SEEDS:-2}
first=${FIRST:-1}
common=(--config configs/lm_bfcl.toml --serial --jobs 1 --seeds "$seeds" --set seed="$first"
    --set policy.init="$weights" --set warmstart.steps=0)
"$bin" sweep "${common[@]}" --grid loss.baseline.delta_v=-0.1,0.1 --out sweeps/bfcl_seeds
"$bin" sweep "${common[@]}" --grid loss.kind=grpo --out sweeps/bfcl_grpo_seeds
for run in sweeps/bfcl_seeds/runs/* sweeps/bfcl_grpo_seeds/runs/*; do
    [ -f "$run/summary.json" ] || continue
    out=bfcl/seeds/$(basename "$run")
    [ -f "$out/summary.json" ] && continue
    "$bin" bfcl "$run" --max-new-tokens 320 --out "$out" \
        --categories simple_python,multiple,parallel,parallel_multiple,irrelevance
done
.venv/bin/python scripts/reference/bfcl_seeds_table.py
