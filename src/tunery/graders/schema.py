"""JSON Schema for `json_schema` graders, through the `jsonschema` package (every keyword, every draft).

A schema is checked once when the grader is parsed (a broken schema is a clear error, not a grader that
silently fails every answer); each failing answer gets its errors with the JSON path of the value that
broke the schema (`$.nights: 0 is less than the minimum of 1`).
"""

from __future__ import annotations

from typing import Any, Callable

from tunery.errors import TuneryError

Checker = Callable[[Any], list[str]]  # value -> errors (empty when valid)


def compile_schema(schema: Any) -> Checker:
    """A function value -> errors (each `JSON path: message`) for `schema`."""
    import jsonschema

    if not isinstance(schema, (dict, bool)):
        raise TuneryError("a JSON schema must be an object", why=f"got {type(schema).__name__}")
    validator_class = jsonschema.validators.validator_for(schema)
    try:
        validator_class.check_schema(schema)
    except jsonschema.SchemaError as exc:
        raise TuneryError("the JSON schema is not valid", why=f"{exc.json_path}: {exc.message}",
                          fix="see https://json-schema.org for the keywords and their values") from None
    validator = validator_class(schema)
    return lambda value: [f"{e.json_path}: {e.message}" for e in validator.iter_errors(value)]
