#!/usr/bin/env bash
# In-tool against in-weight learning (Houliston, Odonnat, Arnal, Cabannes 2025) at toy scale
# (configs/in_tool.toml): the `lookup` facts taught by supervised training to the small
# transformer, through the `get` tool (task = lookup) or into the weights (task = recall: no
# tool), for several database sizes (4 facts per entity) and model sizes (d_model). Prints the
# table (train completion = recall accuracy on the facts taught; held-out = entities never
# taught) and writes docs/in_tool_recall.png (recall accuracy against the number of entities,
# one line per model size and task). The sweep goes under sweeps/in_tool/ and resumes if
# interrupted (run again with KEEP=1). ASYMRE=path runs that binary instead of building one.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/asymre_bin.sh
root=sweeps/in_tool
[ "${KEEP:-0}" = 1 ] || rm -rf "$root"
mkdir -p docs

"$bin" sweep --config configs/in_tool.toml --out "$root" --serial --jobs 2 \
    --grid env.entities=${ENTITIES:-50,100,200,400,800} \
    --grid policy.d_model=${SIZES:-16,32,64} \
    --grid env.task=lookup,recall
"$bin" plot "$root" --out "$root" --title "Recall taught through the tool or into the weights" >/dev/null
cp "$root/final.png" docs/in_tool_recall.png
cat "$root/table.txt"
echo "figure: docs/in_tool_recall.png"
