#!/usr/bin/env python3
"""Serves Python code as an asymre tool program (`[[tools]] command`): a module's functions
(stateless), or classes with one instance per session (stateful).

    python3 scripts/pytools.py MODULE.py                   # serve the functions: JSON lines
    python3 scripts/pytools.py MODULE.py --toml            # print the [[tools]] entries
    python3 scripts/pytools.py MODULE.py --class NAME ...  # serve classes, one instance per session
    python3 scripts/pytools.py --bfcl                      # BFCL's multi-turn API classes
    ... --doc FILE.json                                    # schemas from a function-doc file

Every public function of MODULE.py (or public method of a served class) is a tool: its name, its
docstring's first paragraph as the description, and its parameters' JSON schema from the type
hints (int → integer, float → number, bool → boolean, list → array, dict → object, str or no
hint → string) and the docstring's `Args:` section; or, with --doc, the documentation in FILE.json
(one {"name", "description", "parameters"} per line, BFCL's multi_turn_func_doc form).

Requests, one JSON object per line; each answer carries the request's id:

    {"id", "name", "arguments"}                      call a function       → {"id", "result"} or {"id", "error"}
    {"id", "session", "open": {CLASS: CONFIG, ...}}  start a session       → {"id", "result": [tool names]}
                                                     ("long_context": true: BFCL's long-context scenarios)
    {"id", "session", "name", "arguments"}           call in a session
    {"id", "session", "close": true}                 end it                → {"id", "result": true}
    {"id", "session", "state": true}                 public attributes     → {"id", "result": {CLASS: {...}}}
    {"id", "session", "same_state": OTHER}           BFCL's state check    → {"id", "result": true | false}
    {"id", "session", "parse": "f('a', n=2)"}        a call in Python form → {"id", "result": {"name", "arguments"}}
    {"id", "sessions": true}                         sessions open         → {"id", "result": N}
    {"id", "tools": true}                            the tools' schemas    → {"id", "result": [{name, description, parameters}]}
    {"id", "classes": true}                          the tools per class   → {"id", "result": {CLASS: [{name, description, parameters}]}}
    {"id", "parse": "f('a', n=2)"}                   a call read by the served functions or classes (no session needed)

A session holds one instance of each class its `open` names, built from that class's config:
`_load_scenario(config)` when the class has it (BFCL's convention), else the constructor's
keyword arguments. Sessions are independent; a call names its method, and the session's instance
that has it answers. An exception is the tool's error, shown to the policy; a malformed request
is answered with an error too, never a crash. Functions written by another model (LATM's tools)
drop in as they are."""
import ast
import copy
import importlib
import importlib.util
import inspect
import json
import os
import re
import sys
import typing

TYPES = {int: "integer", float: "number", bool: "boolean", str: "string",
         list: "array", tuple: "array", dict: "object"}

# BFCL's multi-turn API classes: (module under func_source_code, class).
BFCL_CLASSES = {
    "GorillaFileSystem": "gorilla_file_system", "MathAPI": "math_api",
    "MessageAPI": "message_api", "TwitterAPI": "posting_api", "TicketAPI": "ticket_api",
    "TradingBot": "trading_bot", "TravelAPI": "travel_booking",
    "VehicleControlAPI": "vehicle_control",
}

# BFCL's classes built without a scenario (its STATELESS_CLASSES).
BFCL_STATELESS = ("MathAPI",)


def load_module(path):
    name = os.path.splitext(os.path.basename(path))[0]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def functions_of(module):
    return {n: f for n, f in inspect.getmembers(module, inspect.isfunction)
            if not n.startswith("_") and f.__module__ == module.__name__}


def methods_of(cls):
    return {n: f for n, f in inspect.getmembers(cls, inspect.isfunction) if not n.startswith("_")}


def json_type(hint):
    """The JSON schema type of a type hint (None: unconstrained)."""
    if hint in TYPES:
        return TYPES[hint]
    origin = typing.get_origin(hint)
    if origin in TYPES:
        return TYPES[origin]
    if origin is typing.Union:
        kinds = [json_type(a) for a in typing.get_args(hint) if a is not type(None)]
        return kinds[0] if len(set(kinds)) == 1 else None
    return "string" if hint is inspect.Parameter.empty else None


def doc_args(doc):
    """Parameter descriptions from a docstring's Google-style `Args:` section."""
    out, inside = {}, False
    for line in (doc or "").splitlines():
        s = line.strip()
        if s in ("Args:", "Arguments:", "Parameters:"):
            inside = True
        elif not inside:
            continue
        elif not s or re.fullmatch(r"\w+:", s):
            if out or s:
                break
        else:
            m = re.match(r"(\w+)\s*(\([^)]*\))?\s*:\s*(.*)", s)
            if m:
                out[m.group(1)] = m.group(3)
            elif out:
                last = next(reversed(out))
                out[last] += " " + s
    return out


def schema(f, skip_self=False):
    params = list(inspect.signature(f).parameters.values())
    if skip_self:
        params = params[1:]
    described = doc_args(inspect.getdoc(f))
    props, required = {}, []
    for p in params:
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        prop = {}
        kind = json_type(p.annotation)
        if kind:
            prop["type"] = kind
        if p.name in described:
            prop["description"] = described[p.name]
        props[p.name] = prop
        if p.default is inspect.Parameter.empty:
            required.append(p.name)
    return {"type": "object", "properties": props, "required": required}


def describe(name, f, skip_self=False):
    doc = (inspect.getdoc(f) or "").split("\n\n")[0].replace("\n", " ")
    return {"name": name, "description": doc, "parameters": schema(f, skip_self)}


def read_docs(path):
    with open(path) as fh:
        docs = [json.loads(line) for line in fh if line.strip()]
    return {d["name"]: {"name": d["name"], "description": d.get("description", ""),
                        "parameters": d.get("parameters", {})} for d in docs}


def to_inline_toml(v):
    if isinstance(v, dict):
        return "{ " + ", ".join("%s = %s" % (k, to_inline_toml(x)) for k, x in v.items()) + " }"
    if isinstance(v, list):
        return "[" + ", ".join(to_inline_toml(x) for x in v) + "]"
    return json.dumps(v)


def toml_entries(specs, command):
    return "\n".join(
        "[[tools]]\nname = %s\ndescription = %s\nparameters = %s\ncommand = %s\n" % (
            json.dumps(s["name"]), json.dumps(s["description"]),
            to_inline_toml(s["parameters"]), json.dumps(command))
        for s in specs)


def plain(v, path=()):
    """A value as JSON can carry it: objects by their public attributes, numbers of other types
    as floats, sets sorted, a reference back up the object tree (a directory's parent) as null."""
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    if id(v) in path or len(path) > 64:
        return None
    path = path + (id(v),)
    if isinstance(v, dict):
        return {str(k): plain(x, path) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [plain(x, path) for x in v]
    if isinstance(v, (set, frozenset)):
        return sorted((plain(x, path) for x in v), key=repr)
    if hasattr(v, "__float__"):
        return float(v)
    if hasattr(v, "__dict__"):
        return {k: plain(x, path) for k, x in vars(v).items() if not k.startswith("_")}
    return str(v)


def bound_method(instances, name):
    for obj in instances.values():
        if not name.startswith("_") and name in methods_of(type(obj)):
            return getattr(obj, name)
    raise ValueError("unknown tool %r in this session" % name)


def same_state(mine, theirs):
    """BFCL's state check: every public attribute of each of `theirs`' instances."""
    for name, ref in theirs.items():
        obj = mine.get(name)
        if obj is None:
            return False
        for attr, value in vars(ref).items():
            if not attr.startswith("_") and getattr(obj, attr, None) != value:
                return False
    return True


def parse_call(lookup, text):
    """`f('a', n=2)` → (name, arguments), positional arguments named by the method's
    signature; values are Python literals."""
    tree = ast.parse(text.strip(), mode="eval").body
    if not isinstance(tree, ast.Call) or not isinstance(tree.func, ast.Name):
        raise ValueError("not a call: %r" % text)
    name = tree.func.id
    f = lookup(name)
    params = [p.name for p in inspect.signature(f).parameters.values()
              if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if not inspect.ismethod(f) and params[:1] == ["self"]:
        params = params[1:]  # a class's function, looked up without an instance
    if len(tree.args) > len(params):
        raise ValueError("too many positional arguments in %r" % text)
    args = {params[i]: ast.literal_eval(a) for i, a in enumerate(tree.args)}
    for kw in tree.keywords:
        args[kw.arg] = ast.literal_eval(kw.value)
    return name, args


def bfcl_result(instances, call):
    """A call's result as BFCL's executor writes it: a string as it is, a dict as JSON, anything
    else by str(); an exception as "Error during execution: …"."""
    try:
        if isinstance(call, str):
            name, args = parse_call(lambda n: bound_method(instances, n), call)
        else:
            name, args = call["name"], call.get("arguments") or {}
        result = bound_method(instances, name)(**args)
    except Exception as e:
        return "Error during execution: %s" % e
    if type(result) is str:
        return result
    if type(result) is dict:
        try:
            return json.dumps(result)
        except Exception:
            return str(result)
    return str(result)


def contains_all(seen, expected):
    """Whether every expected result is among those seen, counted with multiplicity."""
    left = list(seen)
    for r in expected:
        if r not in left:
            return False
        left.remove(r)
    return True


class Server:
    def __init__(self, functions, classes, docs=None, stateless=()):
        self.functions = functions
        self.classes = classes
        self.docs = docs or {}
        # Classes built without their config (BFCL's MathAPI).
        self.stateless = set(stateless)
        self.sessions = {}

    def tools(self):
        specs = [describe(n, f) for n, f in self.functions.items()]
        for cls in self.classes.values():
            specs += [describe(n, f, skip_self=True) for n, f in methods_of(cls).items()]
        return [self.docs.get(s["name"], s) for s in specs]

    def instances(self, spec, long_context=False):
        """One instance of each class `spec` names, built from its config."""
        if not isinstance(spec, dict):
            raise ValueError("open wants {CLASS: CONFIG, ...}")
        instances = {}
        for name, config in spec.items():
            cls = self.classes.get(name)
            if cls is None:
                raise ValueError("unknown class %r (served: %s)" % (name, ", ".join(self.classes)))
            config = copy.deepcopy(config or {})
            if name in self.stateless:
                obj = cls()
            elif hasattr(cls, "_load_scenario"):
                obj = cls()
                if long_context:
                    obj._load_scenario(config, long_context=True)
                else:
                    obj._load_scenario(config)
            else:
                obj = cls(**config)
            instances[name] = obj
        return instances

    def open(self, sid, spec, long_context=False):
        if sid in self.sessions:
            raise ValueError("session %r is already open" % sid)
        instances = self.instances(spec, long_context)
        self.sessions[sid] = instances
        return sorted(n for obj in instances.values() for n in methods_of(type(obj)))

    def session(self, sid):
        if sid not in self.sessions:
            raise ValueError("no session %r (never opened, closed, or lost in a restart)" % sid)
        return self.sessions[sid]

    def function(self, name):
        f = self.functions.get(name)
        if f is None:
            needs = " (it needs a session)" if self.classes else ""
            raise ValueError("unknown tool %r%s" % (name, needs))
        return f

    def method(self, sid, name):
        return bound_method(self.session(sid), name)

    def by_class(self):
        return {name: [self.docs.get(n, describe(n, f, skip_self=True))
                       for n, f in methods_of(cls).items()]
                for name, cls in self.classes.items()}

    def unbound(self, name):
        for cls in self.classes.values():
            if not name.startswith("_") and name in methods_of(cls):
                return getattr(cls, name)
        return self.function(name)

    def same_state(self, sid, other):
        return same_state(self.session(sid), self.session(other))

    def grade(self, spec):
        """BFCL's multi-turn rule on a whole conversation, replayed on fresh instances (as
        BFCL's multi_turn_checker does): `{"classes": {CLASS: CONFIG}, "long_context": bool,
        "model": per turn the calls the assistant made ({"name", "arguments"} or Python text),
        "gold": per turn the ground truth's calls}` → per turn whether it is right, and the
        conversation's verdict with BFCL's reason for the first wrong turn."""
        long_context = bool(spec.get("long_context"))
        mine = self.instances(spec["classes"], long_context)
        gold = self.instances(spec["classes"], long_context)
        model_turns, gold_turns = spec["model"], spec["gold"]
        seen, turns, reason = [], [], None
        for t, gold_calls in enumerate(gold_turns):
            calls = model_turns[t] if t < len(model_turns) else []
            seen += [bfcl_result(mine, c) for c in calls]
            expected = [bfcl_result(gold, c) for c in gold_calls]
            why = None
            if gold_calls and not calls:
                why = "multi_turn:empty_turn_model_response"
            elif gold_calls and not same_state(mine, gold):
                why = "multi_turn:instance_state_mismatch"
            elif gold_calls and not contains_all(seen, expected):
                why = "multi_turn:execution_response_mismatch"
            turns.append(why is None)
            if why and reason is None:
                reason = why
        return {"valid": reason is None, "turns": turns, "reason": reason}

    def parse(self, sid, text):
        if sid is None:
            lookup = self.unbound
        else:
            instances = self.session(sid)
            lookup = lambda n: bound_method(instances, n)
        name, args = parse_call(lookup, text)
        return {"name": name, "arguments": args}

    def answer(self, req):
        sid = req.get("session")
        if sid is not None and not isinstance(sid, (str, int)):
            raise ValueError("a session is named by a string or an integer")
        if "sessions" in req:
            return len(self.sessions)
        if "tools" in req:
            return self.tools()
        if "classes" in req:
            return self.by_class()
        if "open" in req:
            return self.open(sid, req["open"], bool(req.get("long_context")))
        if "grade" in req:
            return self.grade(req["grade"])
        if "close" in req:
            self.session(sid)
            del self.sessions[sid]
            return True
        if "state" in req:
            return {n: plain(o) for n, o in self.session(sid).items()}
        if "same_state" in req:
            return self.same_state(sid, req["same_state"])
        if "parse" in req:
            return self.parse(sid, req["parse"])
        name, args = req.get("name"), req.get("arguments") or {}
        if not isinstance(args, dict):
            raise ValueError("arguments must be an object")
        f = self.function(name) if sid is None else self.method(sid, name)
        try:
            return plain(f(**args))
        except TypeError as e:
            if "argument" in str(e):
                raise ValueError("bad arguments: %s" % e)
            raise

    def serve(self, lines, out):
        for line in lines:
            if not line.strip():
                continue
            try:
                req = json.loads(line)
                if not isinstance(req, dict):
                    raise ValueError("a request is a JSON object")
            except ValueError as e:
                out.write(json.dumps({"id": None, "error": "bad request: %s" % e}) + "\n")
                out.flush()
                continue
            try:
                ans = {"id": req.get("id"), "result": self.answer(req)}
            except Exception as e:  # the tool's own error is the policy's to see
                ans = {"id": req.get("id"), "error": str(e) or type(e).__name__}
            out.write(json.dumps(ans, default=repr) + "\n")
            out.flush()


def bfcl_classes():
    base = "bfcl_eval.eval_checker.multi_turn_eval.func_source_code."
    return {name: getattr(importlib.import_module(base + module), name)
            for name, module in BFCL_CLASSES.items()}


def bfcl_docs():
    import bfcl_eval
    root = os.path.join(os.path.dirname(bfcl_eval.__file__), "data", "multi_turn_func_doc")
    docs = {}
    for f in sorted(os.listdir(root)):
        if f.endswith(".json"):
            docs.update(read_docs(os.path.join(root, f)))
    return docs


def main(argv):
    args, module_path, class_names, doc_path = argv[1:], None, [], None
    toml, bfcl = False, False
    i = 0
    while i < len(args):
        a = args[i]
        if a in ("--class", "--doc") and i + 1 >= len(args):
            sys.exit("pytools: %s needs a value" % a)
        if a == "--class":
            class_names.append(args[i + 1])
            i += 1
        elif a == "--doc":
            doc_path = args[i + 1]
            i += 1
        elif a == "--toml":
            toml = True
        elif a == "--bfcl":
            bfcl = True
        elif a.startswith("-"):
            sys.exit("pytools: unknown option %s\n\n%s" % (a, __doc__))
        else:
            module_path = a
        i += 1
    if module_path is None and not bfcl:
        sys.exit(__doc__)
    functions, classes, docs, stateless = {}, {}, {}, ()
    if bfcl:
        classes, docs, stateless = bfcl_classes(), bfcl_docs(), BFCL_STATELESS
    if module_path is not None:
        module = load_module(module_path)
        if class_names:
            for n in class_names:
                cls = getattr(module, n, None)
                if not inspect.isclass(cls):
                    sys.exit("pytools: %s has no class %s" % (module_path, n))
                classes[n] = cls
        else:
            functions = functions_of(module)
    if doc_path is not None:
        docs.update(read_docs(doc_path))
    server = Server(functions, classes, docs, stateless)
    if toml:
        command = ["python3", "scripts/pytools.py"] + argv[1:]
        command.remove("--toml")
        print(toml_entries(server.tools(), command))
    else:
        server.serve(sys.stdin, sys.stdout)


if __name__ == "__main__":
    main(sys.argv)
