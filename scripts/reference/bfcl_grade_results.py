#!/usr/bin/env python3
"""Grades the BFCL result files that `asymre bfcl --out DIR` wrote with BFCL's own checker
(scripts/reference/bfcl_check.py: ast_checker, and no call for the irrelevance categories).

    .venv/bin/python scripts/reference/bfcl_grade_results.py DIR [--total CATEGORY=N ...]

Prints per category the tasks graded, how many BFCL calls right, and the accuracy. A task that
the judge did not play (its prompt did not fit) has no result line; --total counts it as wrong.
Result lines hold only the calls that decoded, so an answer with a block that did not decode,
which `asymre bfcl` counts wrong, can be right here: the two columns may differ by those."""
import glob
import json
import os
import subprocess
import sys

import bfcl_eval

DATA = os.path.join(os.path.dirname(bfcl_eval.__file__), "data")
HERE = os.path.dirname(os.path.abspath(__file__))


def load(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def verdicts(out_dir, category):
    """id → BFCL's verdict for each result line of one category's result file in `out_dir`."""
    path = os.path.join(out_dir, "BFCL_v4_%s_result.json" % category)
    if not os.path.exists(path):
        sys.exit("%s: no result file for %s" % (out_dir, category))
    tasks = {e["id"]: e for e in load(os.path.join(DATA, "BFCL_v4_%s.json" % category))}
    answers = {}
    if "irrelevance" not in category:
        answers = {a["id"]: a["ground_truth"] for a in
                   load(os.path.join(DATA, "possible_answer", "BFCL_v4_%s.json" % category))}
    results = load(path)
    lines = [json.dumps({"category": category, "function": tasks[r["id"]]["function"],
                         "output": r["result"], "answer": answers.get(r["id"], [])})
             for r in results]
    proc = subprocess.run([sys.executable, os.path.join(HERE, "bfcl_check.py")],
                          input="\n".join(lines) + "\n", capture_output=True, text=True,
                          check=True)
    valid = [json.loads(v)["valid"] for v in proc.stdout.splitlines() if v.strip()]
    return {r["id"]: v for r, v in zip(results, valid)}


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    out_dir, totals = sys.argv[1], {}
    for a in sys.argv[2:]:
        if a.startswith("--total="):
            a = a[len("--total="):]
        if "=" in a:
            k, v = a.split("=", 1)
            totals[k] = int(v)
    for path in sorted(glob.glob(os.path.join(out_dir, "BFCL_v4_*_result.json"))):
        category = os.path.basename(path)[len("BFCL_v4_"):-len("_result.json")]
        graded = verdicts(out_dir, category)
        right = sum(graded.values())
        total = totals.get(category, len(graded))
        print("%-24s %5d graded %5d right  %5.1f%% of %d" % (
            category, len(graded), right, 100.0 * right / max(total, 1), total))


if __name__ == "__main__":
    main()
