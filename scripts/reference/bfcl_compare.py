#!/usr/bin/env python3
"""Compares judged models task by task with BFCL's own checker: for each OTHER directory, how
many held-out tasks went from right (in BASE) to wrong and from wrong to right, and the exact
two-sided McNemar p-value of that split (are the flips more one way than chance would give?).

    .venv/bin/python scripts/reference/bfcl_compare.py BASE_DIR OTHER_DIR... [--categories A,B]

Each directory is an `asymre bfcl --out` directory. The categories default to the four non-live
AST ones; tasks are matched by id, and a task missing from a directory counts as wrong there.
The p-value speaks only of the test tasks' sampling: it says nothing of how another training
seed would have landed."""
import argparse
import json
import math
import os
import subprocess
import sys

import bfcl_eval

DATA = os.path.join(os.path.dirname(bfcl_eval.__file__), "data")
HERE = os.path.dirname(os.path.abspath(__file__))
NON_LIVE = ["simple_python", "multiple", "parallel", "parallel_multiple"]


def load(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def verdicts(out_dir, category):
    """id → BFCL's verdict for each result line of one category in one directory."""
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


def mcnemar(b, c):
    """Exact two-sided McNemar p-value for b flips one way and c the other."""
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(b, c) + 1)) / 2.0 ** n
    return min(1.0, 2.0 * tail)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("base")
    parser.add_argument("others", nargs="+")
    parser.add_argument("--categories", default=",".join(NON_LIVE))
    args = parser.parse_args()
    categories = args.categories.split(",")
    base_v = {c: verdicts(args.base, c) for c in categories}
    tasks = sum(len(v) for v in base_v.values())
    right = sum(sum(v.values()) for v in base_v.values())
    print("%s: %d of %d right (%s)" % (args.base, right, tasks, ",".join(categories)))
    for other in args.others:
        lost = gained = now = 0
        for c in categories:
            o = verdicts(other, c)
            now += sum(o.values())
            for k, was in base_v[c].items():
                is_right = o.get(k, False)
                lost += was and not is_right
                gained += is_right and not was
        print("%s: %d right; right → wrong %d, wrong → right %d, McNemar exact p = %.3g" % (
            other, now, lost, gained, mcnemar(lost, gained)))


if __name__ == "__main__":
    main()
