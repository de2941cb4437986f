#!/usr/bin/env bash
# Trains every tool-use config (configs/tool_*.toml) and prints, per task, held-out completion and
# tool F1 after the warm start and after AsymRE (δV = −0.1, relative), with wall times.
# Runs go under runs/tool_use_table/. About 15 minutes on a 2-core machine.
set -euo pipefail
cd "$(dirname "$0")/.."
make -s build >/dev/null
bin=./target/release/asymre
root=runs/tool_use_table
rm -rf "$root"
printf '| task | warm start: completion | tool F1 | AsymRE: completion | tool F1 | Δ completion | warm start s | total s |\n|---|---|---|---|---|---|---|---|\n'
for task in calc lookup chain fanout menu; do
    out="$root/$task"
    "$bin" train --config "configs/tool_$task.toml" --out "$out" --set logging.progress=false >/dev/null 2>&1
    python3 - "$out/summary.json" "$task" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
w, f = s["warmstart_heldout"], s["final_heldout"]
print(f"| {sys.argv[2]} | {w['completion']:.3f} | {w['f1']:.3f} | {f['completion']:.3f} | {f['f1']:.3f} | "
      f"{100 * (f['completion'] - w['completion']):+.1f} | {s['warmstart_seconds']:.1f} | {s['wall_time']:.0f} |")
PY
done
