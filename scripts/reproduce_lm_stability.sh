#!/usr/bin/env bash
# The paper's LLM stability finding at small scale on a pretrained LM: AsymRE with
# δV ∈ {−0.1, 0, +0.1} relative to the group mean, 2 seeds each, on `calc` chat episodes of
# SmolLM2-135M-Instruct (LoRA), ±1 completion rewards and a behaviour policy refreshed every 4
# learner steps (configs/lm_stability.toml). Prints the table (train reward, held-out completion,
# entropy, collapsed runs) and writes docs/lm_stability_final.png and docs/lm_stability_curves.png.
# The sweep goes under sweeps/lm_stability/ and resumes if interrupted (run again with KEEP=1).
# About 80 minutes on a 2-core machine (6 runs of about 12 minutes, one at a time, plus their
# final evaluations, which take longer for runs that broke down).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/asymre_bin.sh
root=sweeps/lm_stability
[ "${KEEP:-0}" = 1 ] || rm -rf "$root"
mkdir -p docs

"$bin" sweep --config configs/lm_stability.toml --out "$root" --seeds 2 --jobs 1 \
    --grid loss.baseline.delta_v=-0.1,0,0.1
"$bin" plot "$root" --out "$root" \
    --title "SmolLM2-135M (LoRA), calc, ±1 rewards, lag ≤ 8: AsymRE across δV" >/dev/null
cp "$root/final.png" docs/lm_stability_final.png
cp "$root/curves.png" docs/lm_stability_curves.png
cat "$root/table.txt"
echo "collapsed runs:"
grep ',true,' "$root/summary.csv" || echo "  none"
echo "figures: docs/lm_stability_final.png docs/lm_stability_curves.png"
