#!/usr/bin/env bash
# Reproduces the paper's bandit figures on the 100-armed bandit (U[0,1] rewards, linear μ init):
#  (a) the limit policy of a fixed μ against V = V^μ + δV, across V^μ: support size, E_π[r] and
#      entropy, with the theory's prediction dashed (exact flow, 1 round × 20000 steps);
#  (b) E_π[r] over 40 policy-iteration rounds × 500 steps for several V below V^μ (exact flow);
#  (c) the same sweep through the sampled actor/learner pipeline.
# Three seeds each (a seed draws a new bandit). Sweeps go under sweeps/bandit/; figures are copied
# to docs/. About 5 minutes on a 2-core machine.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/asymre_bin.sh
root=sweeps/bandit
rm -rf "$root"
mkdir -p docs

echo "== (a) limit of a fixed μ against δV = V − V^μ (exact flow)"
"$bin" sweep --config configs/bandit.toml --out "$root/limit" --seeds 3 \
    --grid loss.baseline.delta_v=-0.4,-0.3,-0.2,-0.15,-0.1,-0.05,-0.02,0,0.02,0.05,0.1 \
    --set env.mode=exact --set env.rounds=1 --set env.steps_per_round=20000 --set logging.every=500

echo "== (b) 40 rounds × 500 steps below V^μ (exact flow)"
"$bin" sweep --config configs/bandit.toml --out "$root/rounds_exact" --seeds 3 \
    --grid loss.baseline.delta_v=-0.3,-0.2,-0.1,-0.05,-0.02,-0.01,0 --set env.mode=exact

echo "== (c) the same through the sampled actor/learner pipeline"
"$bin" sweep --config configs/bandit.toml --out "$root/rounds_sampled" --seeds 3 \
    --grid loss.baseline.delta_v=-0.3,-0.2,-0.1,-0.05,-0.02,-0.01,0

"$bin" plot "$root/limit" --title "Bandit: the limit of a fixed μ against δV (exact flow)" >/dev/null
"$bin" plot "$root/rounds_exact" --title "Bandit: 40 rounds × 500 steps, exact flow" >/dev/null
"$bin" plot "$root/rounds_sampled" --title "Bandit: 40 rounds × 500 steps, sampled" >/dev/null
cp "$root/limit/final.png" docs/bandit_limit.png
cp "$root/rounds_exact/curves.png" docs/bandit_rounds_exact.png
cp "$root/rounds_exact/final.png" docs/bandit_rounds_exact_final.png
cp "$root/rounds_sampled/curves.png" docs/bandit_rounds_sampled.png
echo "figures: docs/bandit_limit.png docs/bandit_rounds_exact.png docs/bandit_rounds_exact_final.png docs/bandit_rounds_sampled.png"
