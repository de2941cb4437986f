#!/usr/bin/env python3
"""Serves the functions of a Python module as an asymre tool program (`[[tools]] command`).

    python3 scripts/pytools.py MODULE.py            # serve: JSON lines on stdin/stdout
    python3 scripts/pytools.py MODULE.py --toml     # print the [[tools]] entries for the config

Every public function of MODULE.py is a tool: its name, its docstring's first paragraph as the
description, and its parameters' JSON schema from the type hints (int → integer, float → number,
bool → boolean, str or no hint → string). A request {"id", "name", "arguments"} is answered with
{"id", "result"} (the function's return value) or {"id", "error"} (the exception's text, or a
missing or unexpected argument). Functions written by another model (LATM's tools) drop in as they
are."""
import importlib.util
import inspect
import json
import os
import sys

TYPES = {int: "integer", float: "number", bool: "boolean", str: "string"}


def load(path):
    name = os.path.splitext(os.path.basename(path))[0]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return {n: f for n, f in inspect.getmembers(module, inspect.isfunction)
            if not n.startswith("_") and f.__module__ == module.__name__}


def schema(f):
    props, required = {}, []
    for p in inspect.signature(f).parameters.values():
        props[p.name] = {"type": TYPES.get(p.annotation, "string")}
        if p.default is inspect.Parameter.empty:
            required.append(p.name)
    return {"type": "object", "properties": props, "required": required}


def toml_entries(path, functions):
    out = []
    for name, f in functions.items():
        doc = (inspect.getdoc(f) or "").split("\n\n")[0].replace("\n", " ")
        out.append("[[tools]]\nname = %s\ndescription = %s\nparameters = %s\ncommand = %s\n" % (
            json.dumps(name), json.dumps(doc), to_inline_toml(schema(f)),
            json.dumps(["python3", "scripts/pytools.py", path])))
    return "\n".join(out)


def to_inline_toml(v):
    if isinstance(v, dict):
        return "{ " + ", ".join("%s = %s" % (k, to_inline_toml(x)) for k, x in v.items()) + " }"
    if isinstance(v, list):
        return "[" + ", ".join(to_inline_toml(x) for x in v) + "]"
    return json.dumps(v)


def serve(functions):
    for line in sys.stdin:
        if not line.strip():
            continue
        req = json.loads(line)
        f = functions.get(req.get("name"))
        try:
            if f is None:
                raise ValueError("unknown tool %r" % req.get("name"))
            result = f(**(req.get("arguments") or {}))
            ans = {"id": req["id"], "result": result}
        except TypeError as e:
            ans = {"id": req["id"], "error": "bad arguments: %s" % e}
        except Exception as e:  # the tool's own error is the policy's to see
            ans = {"id": req["id"], "error": str(e) or type(e).__name__}
        sys.stdout.write(json.dumps(ans) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    fns = load(sys.argv[1])
    if "--toml" in sys.argv[2:]:
        print(toml_entries(sys.argv[1], fns))
    else:
        serve(fns)
