#!/usr/bin/env bash
# Redraws the README's figures (docs/*.png) from the runs and sweeps that the reproduce scripts
# and the README's commands leave in runs/ and sweeps/, without training again.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${ASYMRE:-./target/release/asymre}
p() { "$bin" plot "$@" >/dev/null; }
p sweeps/bandit/limit --title "Bandit: the limit of a fixed μ against δV (exact flow)"
cp sweeps/bandit/limit/final.png docs/bandit_limit.png
p sweeps/bandit/rounds_exact --title "Bandit: 40 rounds × 500 steps, exact flow"
cp sweeps/bandit/rounds_exact/curves.png docs/bandit_rounds_exact.png
cp sweeps/bandit/rounds_exact/final.png docs/bandit_rounds_exact_final.png
p sweeps/bandit/rounds_sampled --title "Bandit: 40 rounds × 500 steps, sampled"
cp sweeps/bandit/rounds_sampled/curves.png docs/bandit_rounds_sampled.png
p sweeps/talm --title "lookup self-play: V = 0 (TALM) against AsymRE δV = −0.1"
cp sweeps/talm/curves.png docs/talm_curves.png
p runs/lookup_200 runs/lookup_1000 --title "lookup: held-out drift, 200 against 1,000 entities" --out docs/lookup_drift.png
p sweeps/tool_use/asymre sweeps/tool_use/baselines --out sweeps/tool_use --title "calc, ±1 rewards, lag ≤ 16: AsymRE across δV, GRPO, REINFORCE"
cp sweeps/tool_use/final.png docs/tool_stability_final.png
cp sweeps/tool_use/curves.png docs/tool_stability_curves.png
p sweeps/in_tool --title "Recall taught through the tool or into the weights"
cp sweeps/in_tool/final.png docs/in_tool_recall.png
p runs/lm_calc --title "SmolLM2-135M-Instruct (LoRA) on calc: warm start, then 40 AsymRE steps" --out docs/lm_calc_curves.png
p runs/lm_lookup --title "SmolLM2-135M-Instruct (LoRA) on lookup: warm start, then 40 AsymRE steps" --out docs/lm_lookup_curves.png
p runs/shop --title "examples/shop: SmolLM2-135M-Instruct (LoRA), a Python tool and a built-in one" --out docs/shop_curves.png
p sweeps/lm_stability --title "SmolLM2-135M (LoRA), calc, ±1 rewards, lag ≤ 8: AsymRE across δV"
cp sweeps/lm_stability/final.png docs/lm_stability_final.png
cp sweeps/lm_stability/curves.png docs/lm_stability_curves.png
echo "redrew docs/*.png"
