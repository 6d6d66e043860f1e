"""A JSON Schema checker for the small, flat subset the event contracts use, in pure Python.

The domain must load without third-party packages, and the event schemas are deliberately
simple: one object with ``required``, ``additionalProperties: false`` and per-property
``type``, ``const``, ``enum``, ``pattern``, ``minimum``, ``minLength`` and ``maxLength``.
:func:`compile_schema` turns such a schema into a checker once; a keyword outside that subset
is refused at compile time (:class:`UnsupportedSchema`), so a schema can never grow a rule that
is silently not enforced. ``format`` is an annotation here as in the reference validator (the
event's own parser checks ``date-time``).

Verdicts and the first error's location equal those of ``jsonschema``'s Draft 2020-12 validator;
``tests/unit/test_schema_check.py`` holds the two equal on generated events. Messages follow
its wording.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable, Final, Mapping

#: Keywords understood at the top level and on a property; anything else is refused.
_TOP_LEVEL: Final = frozenset({"$schema", "$id", "title", "description", "type", "additionalProperties",
                               "required", "properties"})
_PROPERTY: Final = frozenset({"type", "const", "enum", "pattern", "minimum", "minLength", "maxLength",
                              "description", "format"})


class UnsupportedSchema(ValueError):
    """The schema uses a keyword or shape this checker does not enforce."""


@dataclass(frozen=True, slots=True)
class SchemaError:
    """The first rule an instance breaks: where (``(root)`` or the property name) and why."""

    field: str
    message: str


Rule = Callable[[Any], str | None]


def _is_integer(value: Any) -> bool:
    # as JSON Schema counts: 1.0 is an integer, True is not
    kind = type(value)
    return kind is int or (kind is float and value.is_integer())


#: One predicate per JSON type (exact ``type()`` checks: ``bool`` is not a number here).
_TYPES: Final[dict[str, Callable[[Any], bool]]] = {
    "string": lambda v: type(v) is str,
    "integer": _is_integer,
    "number": lambda v: type(v) is int or type(v) is float,
    "null": lambda v: v is None,
    "boolean": lambda v: type(v) is bool,
    "object": lambda v: type(v) is dict,
    "array": lambda v: type(v) is list,
}


def _is_type(value: Any, name: str) -> bool:
    try:
        return _TYPES[name](value)
    except KeyError:
        raise UnsupportedSchema(f"unknown type {name!r}") from None


def _equal(a: Any, b: Any) -> bool:
    """JSON equality: ``1 == 1.0`` but ``True != 1``."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    return bool(a == b)


def _type_rule(spec: Any) -> Rule:
    names = [spec] if isinstance(spec, str) else list(spec)
    for name in names:
        _is_type(None, name)  # refuse unknown type names at compile time
    shown = repr(names[0]) if len(names) == 1 else repr(names)
    predicates = [_TYPES[n] for n in names]
    if len(predicates) == 1:
        only = predicates[0]
        return lambda value: None if only(value) else f"{value!r} is not of type {shown}"
    return lambda value: None if any(p(value) for p in predicates) else f"{value!r} is not of type {shown}"


def _property_rules(name: str, spec: Mapping[str, Any]) -> list[Rule]:
    unknown = set(spec) - _PROPERTY
    if unknown:
        raise UnsupportedSchema(f"property {name!r} uses unsupported keywords {sorted(unknown)}")
    rules: list[Rule] = []
    if "type" in spec:
        rules.append(_type_rule(spec["type"]))
    if "const" in spec:
        const = spec["const"]
        rules.append(lambda v: None if _equal(v, const) else f"{const!r} was expected")
    if "enum" in spec:
        choices = list(spec["enum"])
        rules.append(lambda v: None if any(_equal(v, c) for c in choices) else f"{v!r} is not one of {choices!r}")
    if "pattern" in spec:
        pattern = re.compile(spec["pattern"])
        rules.append(lambda v: None if not isinstance(v, str) or pattern.search(v)
                     else f"{v!r} does not match {pattern.pattern!r}")
    if "minimum" in spec:
        low = spec["minimum"]
        rules.append(lambda v: None if not _is_type(v, "number") or v >= low
                     else f"{v!r} is less than the minimum of {low!r}")
    if "minLength" in spec:
        shortest = spec["minLength"]
        rules.append(lambda v: None if not isinstance(v, str) or len(v) >= shortest else f"{v!r} is too short")
    if "maxLength" in spec:
        longest = spec["maxLength"]
        rules.append(lambda v: None if not isinstance(v, str) or len(v) <= longest else f"{v!r} is too long")
    return rules


def compile_schema(schema: Mapping[str, Any]) -> Callable[[Any], SchemaError | None]:
    """A checker for ``schema``: returns ``None`` for a valid instance, else its first error
    (root-level errors first, then properties in name order, as the reference sorts them)."""
    unknown = set(schema) - _TOP_LEVEL
    if unknown or schema.get("type") != "object" or schema.get("additionalProperties", True) not in (True, False):
        raise UnsupportedSchema(f"only flat object schemas are supported (unsupported: {sorted(unknown)})")
    required = list(schema.get("required", ()))
    closed = schema.get("additionalProperties") is False
    rules = {name: _property_rules(name, spec) for name, spec in sorted(schema.get("properties", {}).items())}
    ordered = tuple((name, tuple(checks)) for name, checks in rules.items())

    def check(instance: Any) -> SchemaError | None:
        if not isinstance(instance, dict):
            return SchemaError("(root)", f"{instance!r} is not of type 'object'")
        for name in required:
            if name not in instance:
                return SchemaError("(root)", f"{name!r} is a required property")
        if closed:
            extra = [k for k in instance if k not in rules]
            if extra:
                listed = ", ".join(repr(k) for k in sorted(extra, key=str))
                verb = "was" if len(extra) == 1 else "were"
                return SchemaError("(root)", f"Additional properties are not allowed ({listed} {verb} unexpected)")
        for name, checks in ordered:
            if name in instance:
                value = instance[name]
                for rule in checks:
                    message = rule(value)
                    if message is not None:
                        return SchemaError(name, message)
        return None

    return check
