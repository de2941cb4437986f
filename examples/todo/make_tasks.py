"""Writes examples/todo/tasks.jsonl: 60 multi-turn conversations about a to-do list, in BFCL's
multi-turn form with the ground truth inline (per user turn, the calls a correct assistant
makes, in Python form). Deterministic: run it again and the file is the same."""
import json
import os
import random

THINGS = ["buy milk", "call mum", "pay rent", "water plants", "book dentist", "fix bike",
          "wash car", "read report", "send invoice", "clean desk", "walk dog", "plan trip"]


def task(i, rng):
    start = rng.sample(THINGS, 3)
    new = rng.choice([t for t in THINGS if t not in start])
    turns, truth = [], []
    kind = i % 3
    # Turn 1: add something.
    turns.append("Please add '%s' to my to-do list." % new)
    truth.append(["add_item(item='%s')" % new])
    items = start + [new]
    if kind == 0:
        done = rng.choice(items)
        turns.append("I finished '%s'. Mark it done." % done)
        truth.append(["complete_item(item='%s')" % done])
    elif kind == 1:
        gone = rng.choice(items)
        turns.append("Drop '%s' from the list, I will not do it." % gone)
        truth.append(["remove_item(item='%s')" % gone])
    else:
        a, b = rng.sample(items, 2)
        turns.append("Both '%s' and '%s' are done now." % (a, b))
        truth.append(["complete_item(item='%s')" % a, "complete_item(item='%s')" % b])
    turns.append("Thanks. What is still open?")
    truth.append(["list_items()"])
    return {
        "id": "todo_%d" % i,
        "question": [[{"role": "user", "content": t}] for t in turns],
        "initial_config": {"TodoList": {"items": start, "done": []}},
        "involved_classes": ["TodoList"],
        "ground_truth": truth,
    }


def main():
    rng = random.Random(7)
    here = os.path.dirname(os.path.abspath(__file__))
    with open(os.path.join(here, "tasks.jsonl"), "w") as f:
        for i in range(60):
            f.write(json.dumps(task(i, rng)) + "\n")


if __name__ == "__main__":
    main()
