"""JSON Schemas from untrusted sources (an API request's ``response_format``, a packaged manifest's
``training.decoding.json_schema``): bounded, self-contained, and validated without ever resolving
a reference outside the schema.

``jsonschema`` still retrieves ``http(s)://`` references with ``urllib`` when no registry is given
(a deprecated fallback): a schema could turn a server into a proxy and stall it on a URL that never
answers. So a schema is checked once, up front (:func:`schema_problem`: size, depth, enum values,
every ``$ref`` local, the schema itself valid for its draft), and instances are validated with an
empty ``referencing`` registry that refuses anything not inside the schema (:func:`validate_instance`).
Written here because neither library bounds size or depth; the walk is iterative, so a deep schema
cannot exhaust Python's recursion limit.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

REF_KEYS = ("$ref", "$dynamicRef", "$recursiveRef")


@dataclass(frozen=True)
class SchemaLimits:
    """What a schema may hold before it is refused (compiling it into a grammar is superlinear)."""

    max_bytes: int = 64 << 10
    max_depth: int = 32
    max_nodes: int = 8_000
    max_enum_values: int = 1_000


DEFAULT_SCHEMA_LIMITS = SchemaLimits()


def _json_path(parts: tuple[str | int, ...]) -> str:
    return "$" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in parts)


def _walk_problem(schema: Any, limits: SchemaLimits) -> str | None:
    stack: list[tuple[Any, tuple[str | int, ...]]] = [(schema, ())]
    nodes = enum_values = 0
    while stack:
        value, path = stack.pop()
        nodes += 1
        if nodes > limits.max_nodes:
            return f"the schema has more than {limits.max_nodes} nodes"
        if len(path) > limits.max_depth:
            return f"{_json_path(path)}: the schema nests deeper than {limits.max_depth} levels"
        if isinstance(value, dict):
            for key in REF_KEYS:
                ref = value.get(key)
                if ref is not None and (not isinstance(ref, str) or not ref.startswith("#")):
                    return (
                        f"{_json_path((*path, key))}: {ref!r} refers outside the schema; "
                        "remote and file references are never resolved (inline the definition under $defs)"
                    )
            if isinstance(value.get("enum"), list):
                enum_values += len(value["enum"])
                if enum_values > limits.max_enum_values:
                    return f"{_json_path((*path, 'enum'))}: more than {limits.max_enum_values} enum values in all"
            stack += [(v, (*path, str(k))) for k, v in value.items()]
        elif isinstance(value, list):
            stack += [(v, (*path, i)) for i, v in enumerate(value)]
    return None


def schema_problem(schema: Any, limits: SchemaLimits = DEFAULT_SCHEMA_LIMITS) -> str | None:
    """Why ``schema`` is refused (too large, too deep, a non-local ``$ref``, invalid for its draft), or ``None``."""
    if not isinstance(schema, dict):
        return "a JSON Schema must be an object"
    try:
        size = len(json.dumps(schema))
    except (ValueError, RecursionError):
        return f"the schema nests deeper than {limits.max_depth} levels"
    if size > limits.max_bytes:
        return f"the schema is {size:,} bytes; the limit is {limits.max_bytes:,}"
    problem = _walk_problem(schema, limits)
    if problem:
        return problem
    import jsonschema

    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.SchemaError as exc:
        return f"{_json_path(tuple(exc.absolute_path))}: not a valid JSON Schema: {exc.message}"
    except Exception as exc:  # a hostile schema must never escape as anything but a refusal
        return f"the schema cannot be checked: {type(exc).__name__}"
    return None


def validate_instance(value: Any, schema: dict[str, Any]) -> str | None:
    """The first error of ``value`` against ``schema`` (``None`` when valid), resolving references
    only inside ``schema``; any failure of the validator itself is reported, never raised."""
    import jsonschema
    from referencing import Registry

    try:
        cls = jsonschema.validators.validator_for(schema)
        error = jsonschema.exceptions.best_match(cls(schema, registry=Registry()).iter_errors(value))
    except Exception as exc:  # Unresolvable, RecursionError, SchemaError: the schema's fault, this request's
        return f"the schema cannot be applied: {type(exc).__name__}: {str(exc)[:200]}"
    if error is None:
        return None
    where = "$" + "".join(f"[{p!r}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path)
    return f"JSON Schema: {where}: {error.message[:500]}"
