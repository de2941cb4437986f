"""Writes examples/shop/tasks.jsonl: "How much are N units of ITEM, in cents?" for every item and
N in 1..6; the held-out split is the items rice, tea, soap and candle (tools generalise, answers
cannot be memorised). Gold calls: price(item), then mul(a=N, b=price) when N > 1."""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
from shop_tools import PRICES  # noqa: E402

HELDOUT = {"rice", "tea", "soap", "candle"}
lines = []
for item, cents in PRICES.items():
    for n in range(1, 7):
        calls = [{"name": "price", "arguments": {"item": item}}]
        if n > 1:
            calls.append({"name": "mul", "arguments": {"a": n, "b": cents}})
        lines.append({"id": "%s-%d" % (item, n), "split": "heldout" if item in HELDOUT else "train",
                      "prompt": "How much are %d units of %s, in cents?" % (n, item) if n > 1 else
                      "How much is one unit of %s, in cents?" % item,
                      "tools": ["price", "mul"], "answer": n * cents, "rule": "number", "calls": calls})
with open(os.path.join(os.path.dirname(__file__), "tasks.jsonl"), "w") as f:
    for line in lines:
        f.write(json.dumps(line) + "\n")
print(len(lines), "tasks")
