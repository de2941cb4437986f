#!/usr/bin/env bash
# E_π[r], support size and entropy over learner steps for several δV, on the 100-armed bandit:
# the sampled actor/learner pipeline (configs/bandit.toml) and the exact expected-gradient flow.
# Writes runs under runs/bandit_delta_v/ and the figures docs/bandit_sampled.png, docs/bandit_exact.png.
# About a minute on a 2-core machine.
set -euo pipefail
cd "$(dirname "$0")/.."
make -s build >/dev/null
bin=./target/release/asymre
root=runs/bandit_delta_v
rm -rf "$root"
mkdir -p docs
for mode in sampled exact; do
    runs=()
    for dv in -0.3 -0.1 0.0 0.1; do
        out="$root/$mode/dv$dv"
        "$bin" train --config configs/bandit.toml --out "$out" \
            --set env.mode=$mode --set loss.baseline.delta_v=$dv --set logging.progress=false \
            | sed -n 's/^E_π/  '"$mode δV=$dv"': E_π/p'
        runs+=("$out")
    done
    "$bin" plot "${runs[@]}" --out "docs/bandit_$mode.png" \
        --title "100-armed bandit, $mode mode: V = V^μ + δV, μ ← π every 500 steps"
done
