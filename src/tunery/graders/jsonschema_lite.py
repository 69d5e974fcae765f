"""A small JSON Schema checker for the keywords that describe model outputs.

Covered: type, enum, const, properties, required, additionalProperties (bool or schema), items,
minItems, maxItems, minLength, maxLength, pattern, minimum, maximum, exclusiveMinimum,
exclusiveMaximum, anyOf, allOf, plus the annotations title, description, $schema, $id, default and
examples. A schema that uses any other keyword is handed to the `jsonschema` package when it is
installed (extra `tunery[jsonschema]`), and refused with that advice when it is not: checking part
of a schema and calling the output valid would be a silent lie.
"""

from __future__ import annotations

import re
from typing import Any, Callable

from tunery.errors import TuneryError

ANNOTATIONS = {"title", "description", "$schema", "$id", "default", "examples", "$comment"}
KEYWORDS = {
    "type", "enum", "const", "properties", "required", "additionalProperties", "items", "minItems",
    "maxItems", "minLength", "maxLength", "pattern", "minimum", "maximum", "exclusiveMinimum",
    "exclusiveMaximum", "anyOf", "allOf",
} | ANNOTATIONS

Checker = Callable[[Any], list[str]]  # value -> errors (empty when valid)


def _is_type(value: Any, name: str) -> bool:
    if name == "integer":
        return isinstance(value, int) and not isinstance(value, bool) or (
            isinstance(value, float) and value.is_integer()
        )
    if name == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    kinds = {"string": str, "boolean": bool, "object": dict, "array": list, "null": type(None)}
    if name not in kinds:
        raise TuneryError(f"JSON schema names an unknown type '{name}'",
                          fix="use string, number, integer, boolean, object, array or null")
    return isinstance(value, kinds[name])


def unsupported_keywords(schema: Any) -> set[str]:
    """Keywords anywhere in `schema` that this checker does not implement."""
    if not isinstance(schema, dict):
        return set()
    found = set(schema) - KEYWORDS
    for key in ("items", "additionalProperties"):
        found |= unsupported_keywords(schema.get(key))
    for sub in (schema.get("properties") or {}).values():
        found |= unsupported_keywords(sub)
    for sub in (schema.get("anyOf") or []) + (schema.get("allOf") or []):
        found |= unsupported_keywords(sub)
    return found


def _check_object(value: dict, schema: dict, path: str) -> list[str]:
    errors = [f"{path}: missing required key '{k}'" for k in schema.get("required", []) if k not in value]
    props = schema.get("properties", {})
    extra = schema.get("additionalProperties", True)
    for key, item in value.items():
        if key in props:
            errors += check(item, props[key], f"{path}.{key}")
        elif extra is False:
            errors.append(f"{path}: unexpected key '{key}'")
        elif isinstance(extra, dict):
            errors += check(item, extra, f"{path}.{key}")
    return errors


def _check_bounds(value: Any, schema: dict, path: str) -> list[str]:
    errors = []
    if isinstance(value, str):
        if len(value) < schema.get("minLength", 0):
            errors.append(f"{path}: shorter than {schema['minLength']} characters")
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            errors.append(f"{path}: longer than {schema['maxLength']} characters")
        if "pattern" in schema and not re.search(schema["pattern"], value):
            errors.append(f"{path}: does not match /{schema['pattern']}/")
    if isinstance(value, list):
        if len(value) < schema.get("minItems", 0):
            errors.append(f"{path}: fewer than {schema['minItems']} items")
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            errors.append(f"{path}: more than {schema['maxItems']} items")
    if _is_type(value, "number"):
        tests = (("minimum", lambda b: value < b), ("maximum", lambda b: value > b),
                 ("exclusiveMinimum", lambda b: value <= b), ("exclusiveMaximum", lambda b: value >= b))
        errors += [f"{path}: {value} breaks {key} {schema[key]}" for key, bad in tests
                   if key in schema and bad(schema[key])]
    return errors


def check(value: Any, schema: dict | bool, path: str = "$") -> list[str]:
    """Every way `value` breaks `schema` (an empty list when it is valid)."""
    if schema is True or schema == {}:
        return []
    if schema is False:
        return [f"{path}: no value is allowed here"]
    types = schema.get("type")
    if types is not None:
        names = types if isinstance(types, list) else [types]
        if not any(_is_type(value, n) for n in names):
            return [f"{path}: expected {' or '.join(names)}, got {type(value).__name__}"]
    if "const" in schema and value != schema["const"]:
        return [f"{path}: expected {schema['const']!r}"]
    if "enum" in schema and value not in schema["enum"]:
        return [f"{path}: {value!r} is not one of {schema['enum']!r}"]
    errors = _check_bounds(value, schema, path)
    if isinstance(value, dict):
        errors += _check_object(value, schema, path)
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(value):
            errors += check(item, schema["items"], f"{path}[{i}]")
    for sub in schema.get("allOf", []):
        errors += check(value, sub, path)
    if "anyOf" in schema and all(check(value, sub, path) for sub in schema["anyOf"]):
        errors.append(f"{path}: matches none of anyOf")
    return errors


def compile_schema(schema: Any) -> Checker:
    """A function value -> errors for `schema`; uses `jsonschema` for keywords beyond this file's."""
    if not isinstance(schema, (dict, bool)):
        raise TuneryError("a JSON schema must be an object", why=f"got {type(schema).__name__}")
    missing = unsupported_keywords(schema)
    if not missing:
        return lambda value: check(value, schema)
    from tunery._deps import require

    try:
        jsonschema = require("jsonschema", extra="jsonschema")
    except TuneryError as exc:
        raise TuneryError(
            f"the JSON schema uses keywords tunery's own checker does not cover: {', '.join(sorted(missing))}",
            why=exc.why, fix=exc.fix,
        ) from exc
    validator = jsonschema.validators.validator_for(schema)(schema)
    return lambda value: [e.message for e in validator.iter_errors(value)]
