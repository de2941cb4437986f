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
import math

from bfcl_grade_results import verdicts

NON_LIVE = ["simple_python", "multiple", "parallel", "parallel_multiple"]


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
