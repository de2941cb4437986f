"""BFCL's own AST checker, run on JSON lines from stdin, one verdict per line on stdout.

Each input line: {"category": "simple_python", "function": [...], "output": [{name: {args}}],
"answer": [{name: {param: [values]}}]}. Each output line: {"valid": bool, "error_type": str}.
The checker comes from the installed bfcl-eval package (`pip install --no-deps bfcl-eval`); its
model registry, which imports every vendor's SDK, is replaced by a stub, since the checker only
asks it whether a model writes "." in function names as "_" (this stub: never).
"""
import json
import sys
import types

registry = types.ModuleType("bfcl_eval.constants.model_config")


class _Config:
    underscore_to_dot = False


class _Registry(dict):
    def __getitem__(self, key):
        return _Config()


registry.MODEL_CONFIG_MAPPING = _Registry()
sys.modules["bfcl_eval.constants.model_config"] = registry

from bfcl_eval.constants.enums import Language  # noqa: E402
from bfcl_eval.eval_checker.ast_eval.ast_checker import ast_checker  # noqa: E402
from bfcl_eval.utils import is_empty_output  # noqa: E402

for line in sys.stdin:
    if not line.strip():
        continue
    case = json.loads(line)
    category = case["category"]
    output = case["output"]
    if "irrelevance" in category:
        valid = is_empty_output(output)
        print(json.dumps({"valid": valid, "error_type": "" if valid else "irrelevance_error"}))
        continue
    try:
        r = ast_checker(case["function"], output, case["answer"], Language.PYTHON, category, "stub")
        print(json.dumps({"valid": bool(r["valid"]), "error_type": r.get("error_type", "")}))
    except Exception as e:  # the checker itself fails on some malformed outputs
        print(json.dumps({"valid": False, "error_type": f"checker_exception:{type(e).__name__}"}))
    sys.stdout.flush()
