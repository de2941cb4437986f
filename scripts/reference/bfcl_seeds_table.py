#!/usr/bin/env python3
"""Held-out BFCL accuracy over training seeds, graded by BFCL's own checker: for each row, the
accuracy per category, the non-live average (the four AST categories' accuracies averaged) and
the live one (their tasks pooled), as BFCL's leaderboard computes them, each as mean ± sample std
over the row's directories; then every seed's non-live (or last) figure.

    .venv/bin/python scripts/reference/bfcl_seeds_table.py [NAME=DIR,DIR,... ...]

Each DIR is an `asymre bfcl --out` directory; a task it did not play (counted in its summary.json,
absent from its result file) counts as wrong. Without arguments: the 20-step rows of
scripts/reproduce_bfcl.sh (seed 0, and its warm start) and scripts/reproduce_bfcl_seeds.sh
(seeds 1 and 2, from that warm start)."""
import json
import os
import statistics
import sys

from bfcl_grade_results import verdicts

NON_LIVE = ["simple_python", "multiple", "parallel", "parallel_multiple"]
LIVE = ["live_simple", "live_multiple", "live_parallel", "live_parallel_multiple"]
ORDER = NON_LIVE + ["irrelevance"] + LIVE + ["live_irrelevance"]
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SEEDS = os.path.join(ROOT, "bfcl", "seeds")
DEFAULT = [
    ("warm start", ["bfcl/warm"], None),
    ("AsymRE δV=-0.1", ["bfcl/asymre"], "loss.baseline.delta_v=-0.1__seed="),
    ("AsymRE δV=+0.1", ["bfcl/asymre_plus"], "loss.baseline.delta_v=0.1__seed="),
    ("GRPO", ["bfcl/grpo"], "loss.kind=grpo__seed="),
]


def default_rows():
    found = sorted(os.listdir(SEEDS)) if os.path.isdir(SEEDS) else []
    return [(name, [os.path.join(ROOT, d) for d in first]
             + [os.path.join(SEEDS, d) for d in found if prefix and d.startswith(prefix)])
            for name, first, prefix in DEFAULT]


def accuracies(out_dir):
    """category → BFCL accuracy (%) of one judged directory, over the tasks its judge counted,
    with the non-live average (of the four categories' accuracies) and the live one (of their
    tasks, pooled), as BFCL's leaderboard computes them, where all four were judged."""
    path = os.path.join(out_dir, "summary.json")
    if not os.path.exists(path):
        sys.exit("%s: no summary.json (not an `asymre bfcl --out` directory, or unfinished)" % out_dir)
    with open(path) as f:
        totals = {c["category"]: c["tasks"] for c in json.load(f)["categories"]}
    right = {c: sum(verdicts(out_dir, c).values()) for c in totals}
    acc = {c: 100.0 * right[c] / max(n, 1) for c, n in totals.items()}
    if all(c in acc for c in NON_LIVE):
        acc["non-live"] = statistics.mean(acc[c] for c in NON_LIVE)
    if all(c in acc for c in LIVE):
        acc["live"] = 100.0 * sum(right[c] for c in LIVE) / max(sum(totals[c] for c in LIVE), 1)
    return acc


def cell(values):
    if len(values) == 1:
        return "%.1f" % values[0]
    return "%.1f ± %.1f" % (statistics.mean(values), statistics.stdev(values))


def main():
    if any(a in ("-h", "--help") for a in sys.argv[1:]):
        sys.exit(__doc__)
    rows = []
    for a in sys.argv[1:]:
        if "=" not in a:
            sys.exit("%s: expected NAME=DIR,DIR,..." % a)
        name, dirs = a.split("=", 1)
        rows.append((name, [d for d in dirs.split(",") if d]))
    rows = rows or default_rows()
    table = []
    for name, dirs in rows:
        if not dirs:
            sys.exit("%s: no directories" % name)
        table.append((name, dirs, [accuracies(d) for d in dirs]))
    seen = {k for _, _, accs in table for a in accs for k in a}
    keys = [k for k in ORDER + ["non-live", "live"] if k in seen]
    last = "non-live" if "non-live" in keys else keys[-1]
    print("%-16s %5s  %s  %s per seed" % ("row", "seeds", "  ".join("%-17s" % k for k in keys), last))
    for name, dirs, accs in table:
        for d, a in zip(dirs, accs):
            missing = [k for k in keys if k not in a]
            if missing:
                sys.exit("%s: %s not judged there (a row's directories must judge the same categories)"
                         % (d, missing[0]))
        print("%-16s %5d  %s  %s" % (name, len(accs),
                                     "  ".join("%-17s" % cell([a[k] for a in accs]) for k in keys),
                                     " ".join("%.1f" % a[last] for a in accs)))


if __name__ == "__main__":
    main()
