#!/usr/bin/env bash
# TALM's iterative self-play (Parisi, Zhao, Fiedel 2022) against AsymRE on the same budget
# (configs/talm_selfplay.toml): from a weak warm start on `lookup`, rounds of sampling G answers
# per task with the round's policy and fine-tuning on them with {0, 1} rewards; V = 0
# (loss.kind = reinforce: training on the correct samples only, TALM's self-play) against
# AsymRE with V = group mean − 0.1. 3 seeds each. Prints the table and writes
# docs/talm_curves.png (held-out completion and train reward over learner steps; a round is
# 20 steps). The sweep goes under sweeps/talm/ and resumes if interrupted (KEEP=1).
# ASYMRE=path runs that binary instead of building one.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/asymre_bin.sh
root=sweeps/talm
[ "${KEEP:-0}" = 1 ] || rm -rf "$root"
mkdir -p docs

"$bin" sweep --config configs/talm_selfplay.toml --out "$root" --serial --jobs 2 \
    --seeds "${SEEDS:-3}" --grid loss.kind=reinforce,asymre
"$bin" plot "$root" --out "$root" --title "lookup self-play: V = 0 (TALM) against AsymRE δV = −0.1" >/dev/null
cp "$root/curves.png" docs/talm_curves.png
cat "$root/table.txt"
echo "figure: docs/talm_curves.png"
