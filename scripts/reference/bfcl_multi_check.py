#!/usr/bin/env python3
"""BFCL's own multi-turn checker on conversations built from the ground truth: the reference
that `scripts/pytools.py --bfcl`'s `grade` request is compared with.

    .venv/bin/python scripts/reference/bfcl_multi_check.py [--per-category N] > cases.jsonl

For the first N tasks of each multi-turn category (by line), writes one JSON line per case:
{"id", "category", "case", "model": per turn the calls (Python text), "valid", "reason"}, where
valid/reason are multi_turn_checker's verdict. The cases: the ground truth itself; one call
dropped; one call's first string argument changed; one state-changing call added; and, when
given with --outputs FILE, real model conversations ({"id", "model"} lines, or the result lines
of `asymre bfcl`: {"id", "result"}; an id may have several), whatever the task's position."""
import argparse
import ast
import json
import os
import sys

import bfcl_eval
from bfcl_eval.eval_checker.multi_turn_eval import multi_turn_utils
from bfcl_eval.eval_checker.multi_turn_eval.multi_turn_checker import multi_turn_checker

DATA = os.path.join(os.path.dirname(bfcl_eval.__file__), "data")
CATEGORIES = ["multi_turn_base", "multi_turn_miss_func", "multi_turn_miss_param",
              "multi_turn_long_context"]
# A call that changes the state of each class (or tries to: BFCL judges what it does).
EXTRA = {
    "GorillaFileSystem": "mkdir(dir_name='extra_folder')",
    "TwitterAPI": "post_tweet(content='an extra tweet')",
    "MessageAPI": "add_contact(user_name='Extra Person')",
    "TicketAPI": "create_ticket(title='extra ticket', description='added')",
    "TradingBot": "add_to_watchlist(stock='ZETA')",
    "TravelAPI": "set_budget_limit(access_token='ABCD1234', budget_limit=1.0)",
    "VehicleControlAPI": "pressBrakePedal(pedalPosition=1.0)",
}


def load(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def changed_argument(call):
    """The call with its first string argument altered (None when it has none)."""
    tree = ast.parse(call, mode="eval").body
    for node in list(tree.args) + [k.value for k in tree.keywords]:
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            node.value = node.value + "_x"
            return ast.unparse(tree)
    return None


def cases(entry, gold):
    yield "gold", [list(t) for t in gold]
    for t, turn in enumerate(gold):
        if len(turn) >= 1:
            dropped = [list(x) for x in gold]
            dropped[t] = turn[:-1]
            yield "dropped", dropped
            break
    for t, turn in enumerate(gold):
        for i, call in enumerate(turn):
            alt = changed_argument(call)
            if alt is not None:
                wrong = [list(x) for x in gold]
                wrong[t][i] = alt
                yield "argument", wrong
                break
        else:
            continue
        break
    extra = next((EXTRA[c] for c in entry["involved_classes"] if c in EXTRA), None)
    if extra is not None:
        for t, turn in enumerate(gold):
            if turn:
                more = [list(x) for x in gold]
                more[t] = turn + [extra]
                yield "extra", more
                break


def verdict(entry, gold, model, tag):
    decoded = [[turn] if turn else [] for turn in model]
    try:
        r = multi_turn_checker(decoded, gold, entry, entry["id"].rsplit("_", 1)[0], tag)
    except Exception as e:  # the checker's own failure is a wrong answer
        r = {"valid": False, "error_type": "checker_error: %s" % e}
    # The instances live in the executor's module, by model name and id: drop them so that a
    # later case starts from the task's scenario.
    for k in [k for k in vars(multi_turn_utils) if k.endswith("_instance")]:
        delattr(multi_turn_utils, k)
    return bool(r.get("valid")), r.get("error_type")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--per-category", type=int, default=200)
    ap.add_argument("--outputs", help="real conversations: {id, model} lines")
    a = ap.parse_args()
    outputs = {}
    if a.outputs:
        for o in load(a.outputs):
            outputs.setdefault(o["id"], []).append(o["model"] if "model" in o else o["result"])
    n = 0
    for category in CATEGORIES:
        entries = load(os.path.join(DATA, "BFCL_v4_%s.json" % category))
        answers = {x["id"]: x["ground_truth"]
                   for x in load(os.path.join(DATA, "possible_answer", "BFCL_v4_%s.json" % category))}
        for i, entry in enumerate(entries):
            gold = answers[entry["id"]]
            todo = list(cases(entry, gold)) if i < a.per_category else []
            todo += [("output", m) for m in outputs.get(entry["id"], [])]
            for case, model in todo:
                valid, reason = verdict(entry, gold, model, "ref%d" % n)
                n += 1
                print(json.dumps({"id": entry["id"], "category": category, "case": case,
                                  "model": model, "valid": valid, "reason": reason}))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
