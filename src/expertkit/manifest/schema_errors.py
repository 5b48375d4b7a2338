"""Turn JSON Schema validation errors into :class:`Problem` objects a person can act on.

jsonschema reports *what* failed (``'lerning_rate' was unexpected``); users need the JSON path,
what was expected, what was found and, for a misspelt key, the key they probably meant.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from typing import Any

from jsonschema import Draft7Validator, ValidationError
from jsonschema.validators import extend

from expertkit.manifest.report import Problem, describe, json_path

_TYPE_NAMES = {"integer": "an integer", "number": "a number", "string": "a string", "boolean": "a boolean"}
_TYPE_NAMES |= {"array": "an array", "object": "an object", "null": "null"}


def _is_strict_integer(_checker: Any, instance: Any) -> bool:
    return isinstance(instance, int) and not isinstance(instance, bool)


# Draft 7 calls 5.0 an integer; the typed model (strict) does not. Validate as strictly as the model.
_STRICT_TYPES = Draft7Validator.TYPE_CHECKER.redefine("integer", _is_strict_integer)
StrictDraft7Validator = extend(Draft7Validator, type_checker=_STRICT_TYPES)


def suggest(word: str, choices: Iterable[str]) -> str | None:
    """The closest choice to ``word``, if one is close enough to be a likely typo."""
    matches = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return matches[0] if matches else None


def _type_text(types: Any) -> str:
    names = [types] if isinstance(types, str) else list(types)
    return " or ".join(_TYPE_NAMES.get(n, n) for n in names)


def _unknown_keys(error: ValidationError) -> list[Problem]:
    schema: Any = error.schema
    instance: Any = error.instance
    allowed = sorted(schema.get("properties", {}))
    extras = [k for k in instance if k not in allowed and not str(k).startswith("_")]
    problems = []
    for key in sorted(extras, key=str):
        guess = suggest(str(key), allowed)
        message = f"unknown key '{key}'" + (f"; did you mean '{guess}'?" if guess else "")
        problems.append(
            Problem(
                path=json_path([*error.absolute_path, key]),
                message=message,
                expected="one of: " + ", ".join(allowed),
                found=f"key '{key}'",
            )
        )
    return problems


def _branch_errors(error: ValidationError) -> list[ValidationError] | None:
    """For ``anyOf`` (mostly ``X | None``): the errors of the one branch whose type the value has.

    A branch whose own top-level ``type`` check failed is one the value was not aiming at; when
    exactly one branch remains, its errors are the useful ones. Otherwise None (report the anyOf).
    """
    by_branch: dict[int, list[ValidationError]] = {}
    for sub in error.context or []:
        by_branch.setdefault(int(sub.relative_schema_path[0]), []).append(sub)
    aimed = [
        errors
        for errors in by_branch.values()
        if not any(e.validator == "type" and not e.relative_path for e in errors)
    ]
    return aimed[0] if len(aimed) == 1 else None


def _bound(error: ValidationError) -> str:
    value = error.validator_value
    return {
        "minimum": f"a value ≥ {value}",
        "maximum": f"a value ≤ {value}",
        "exclusiveMinimum": f"a value > {value}",
        "exclusiveMaximum": f"a value < {value}",
        "minItems": f"at least {value} item{'s' if value != 1 else ''}",
        "maxItems": f"at most {value} item{'s' if value != 1 else ''}",
        "minLength": f"at least {value} character{'s' if value != 1 else ''}",
        "maxLength": f"at most {value} characters",
    }[str(error.validator)]


def _one_problem(error: ValidationError) -> Problem:
    path = json_path(error.absolute_path)
    found = describe(error.instance)
    kind = error.validator
    if kind == "required":
        key = str(error.message).split("'")[1]
        return Problem(json_path([*error.absolute_path, key]), f"missing required key '{key}'", "a value", "nothing")
    if kind == "type":
        return Problem(path, "wrong type", _type_text(error.validator_value), found)
    if kind in ("enum", "const"):
        options: Any = error.validator_value if kind == "enum" else [error.validator_value]
        expected = " or ".join(repr(o) if isinstance(o, str) else str(o) for o in options)
        guess = suggest(error.instance, [str(o) for o in options]) if isinstance(error.instance, str) else None
        message = "value not allowed" + (f"; did you mean '{guess}'?" if guess else "")
        return Problem(path, message, expected, found)
    if kind == "pattern":
        return Problem(
            path, "value does not match the required format", f"a match for /{error.validator_value}/", found
        )
    if kind in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
        return Problem(path, "value out of range", _bound(error), found)
    if kind in ("minItems", "maxItems", "minLength", "maxLength"):
        return Problem(path, "wrong size", _bound(error), found)
    if kind == "anyOf":
        branches: Any = error.validator_value
        branch_types = [s.get("type", "object") for s in branches]
        return Problem(path, "wrong type", _type_text(branch_types), found)
    return Problem(path, str(error.message), "", found)


def schema_problems(data: Any, schema: dict[str, Any]) -> list[Problem]:
    """Every schema violation in ``data`` as problems, sorted by path."""
    problems: list[Problem] = []
    for error in StrictDraft7Validator(schema).iter_errors(data):
        problems.extend(_problems_for(error))
    unique = {(p.path, p.message, p.expected, p.found): p for p in problems}
    return sorted(unique.values(), key=lambda p: (p.path, p.message))


def _problems_for(error: ValidationError) -> list[Problem]:
    if error.validator == "additionalProperties":
        return _unknown_keys(error)
    if error.validator == "anyOf":
        branch = _branch_errors(error)
        if branch:
            return [p for sub in branch for p in _problems_for(sub)]
    return [_one_problem(error)]
