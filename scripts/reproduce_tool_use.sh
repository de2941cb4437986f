#!/usr/bin/env bash
# The paper's LLM stability study at small scale: AsymRE with δV ∈ {−0.5 … 0.3} relative to the
# group mean, against GRPO and plain REINFORCE, 3 seeds each, on `calc` with ±1 rewards and a
# behaviour policy lagging by up to 16 learner steps (configs/tool_stability.toml). Prints the
# tables (train reward, held-out completion, entropy, collapsed runs) and writes the figures
# docs/tool_stability_final.png and docs/tool_stability_curves.png. Sweeps go under
# sweeps/tool_use/ and resume if interrupted (run the script again with KEEP=1).
# About 25 minutes on a 2-core machine (30 runs, two at a time, serial mode).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/asymre_bin.sh
root=sweeps/tool_use
[ "${KEEP:-0}" = 1 ] || rm -rf "$root"
mkdir -p docs

echo "== AsymRE across δV"
"$bin" sweep --config configs/tool_stability.toml --out "$root/asymre" --seeds 3 --serial \
    --grid loss.baseline.delta_v=-0.5,-0.3,-0.2,-0.1,0,0.1,0.2,0.3
echo "== GRPO and REINFORCE"
"$bin" sweep --config configs/tool_stability.toml --out "$root/baselines" --seeds 3 --serial \
    --grid loss.kind=grpo,reinforce

"$bin" plot "$root/asymre" "$root/baselines" --out "$root" \
    --title "calc, ±1 rewards, lag ≤ 16: AsymRE across δV, GRPO, REINFORCE" >/dev/null
cp "$root/final.png" docs/tool_stability_final.png
cp "$root/curves.png" docs/tool_stability_curves.png
echo "collapsed runs:"
cat "$root"/asymre/summary.csv "$root"/baselines/summary.csv | grep ',true,' || echo "  none"
echo "figures: docs/tool_stability_final.png docs/tool_stability_curves.png"
