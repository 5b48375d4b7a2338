"""BFCL function-call accuracy, checked the way BFCL's AST checker does it.

A generated answer is JSON: ``{"name": ..., "arguments": {...}}`` or a list of them (parallel
calls). Against ``possible_answer`` (``[{function: {arg: [allowed values]}}]``) and the function
specs, a call is correct when the name matches, every required argument is present, no argument
is unknown to the function, every value has the declared type and is one of the allowed values
(strings compared case- and punctuation-insensitively, as BFCL standardises them), and optional
arguments whose allowed values include ``""`` may be left out. Parallel calls match in any order.
"""

from __future__ import annotations

import itertools
import json
import re
from dataclasses import dataclass
from typing import Any

_STRIP = re.compile(r"[ ,./\-_*^'\"]")
TYPES = {
    "integer": (int,),
    "float": (float, int),
    "number": (float, int),
    "string": (str,),
    "boolean": (bool,),
    "array": (list,),
    "tuple": (list,),
    "dict": (dict,),
    "object": (dict,),
    "any": (object,),
}


@dataclass(frozen=True)
class CallScore:
    correct: bool
    reason: str


def _standard(value: Any) -> Any:
    if isinstance(value, str):
        return _STRIP.sub("", value).lower()
    if isinstance(value, list):
        return [_standard(v) for v in value]
    if isinstance(value, dict):
        return {k: _standard(v) for k, v in value.items()}
    return value


def _type_ok(value: Any, declared: str) -> bool:
    if declared in ("integer",) and isinstance(value, bool):
        return False
    return isinstance(value, TYPES.get(declared, (object,)))


def check_call(call: Any, truth: dict[str, dict[str, list[Any]]], functions: list[dict[str, Any]]) -> CallScore:
    if (
        not isinstance(call, dict)
        or not isinstance(call.get("name"), str)
        or not isinstance(call.get("arguments"), dict)
    ):
        return CallScore(False, 'not a call: expected {"name": ..., "arguments": {...}}')
    ((name, allowed),) = truth.items()
    if call["name"] != name:
        return CallScore(False, f"called {call['name']!r}, expected {name!r}")
    spec = next((f for f in functions if f.get("name") == name), {})
    properties = spec.get("parameters", {}).get("properties", {})
    required = spec.get("parameters", {}).get("required", [])
    arguments = call["arguments"]
    for arg in required:
        if arg not in arguments:
            return CallScore(False, f"missing required argument {arg!r}")
    for arg, value in arguments.items():
        if arg not in properties and arg not in allowed:
            return CallScore(False, f"unexpected argument {arg!r}")
        declared = properties.get(arg, {}).get("type", "any")
        if not _type_ok(value, declared):
            return CallScore(False, f"argument {arg!r} is {type(value).__name__}, declared {declared}")
        values = allowed.get(arg, [])
        if values and _standard(value) not in [_standard(v) for v in values]:
            return CallScore(False, f"argument {arg!r} = {value!r} is not among {values!r}")
    for arg, values in allowed.items():
        if arg not in arguments and "" not in values:  # "" marks an argument that may be left out
            return CallScore(False, f"missing argument {arg!r}")
    return CallScore(True, "correct")


def check_answer(text: str, truth: list[dict[str, dict[str, list[Any]]]], functions: list[dict[str, Any]]) -> CallScore:
    """Score a generated answer (JSON text) against a BFCL possible answer (one or parallel calls);
    an empty ``truth`` (BFCL's irrelevance items) expects no call at all."""
    if not truth:
        called = text.lstrip().startswith(("{", "["))
        return CallScore(not called, "called a function where none fits" if called else "correct: no call")
    try:
        parsed = json.loads(text)
    except ValueError as exc:
        return CallScore(False, f"not JSON: {exc}")
    calls = parsed if isinstance(parsed, list) else [parsed]
    if len(calls) != len(truth):
        return CallScore(False, f"{len(calls)} calls, expected {len(truth)}")
    if len(truth) == 1:
        return check_call(calls[0], truth[0], functions)
    for order in itertools.permutations(range(len(calls))):
        if all(check_call(calls[i], t, functions).correct for i, t in zip(order, truth, strict=True)):
            return CallScore(True, "correct (parallel)")
    return CallScore(False, "no assignment of the calls matches the expected calls")
