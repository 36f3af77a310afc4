"""The one validation layer: typed config sections, and pydantic errors as one-line ConfigErrors.

Why here: every configuration object -- the sections of a training run (``DataConfig``,
``GeneratorConfig``, ``DriftConfig``, ``FrictionConfig``, ``OFMConfig``, the trainer's optimiser,
evaluation and run settings) and the search-space file -- is a frozen pydantic dataclass declared
with :data:`SECTION` and the strict field types below, next to the code that uses its values. The
declaration is the only check: the core takes the built object and never re-checks it.
:func:`validate` is the edge where plain data (YAML, flags, a Tune config, checkpoint metadata)
becomes such an object; it reports the first problem as a :class:`~dmf_ray.errors.ConfigError`
whose field is the dotted key (``friction.power: must be > 0, got -1``).

Strictness per field (pydantic's strict mode): a string is never a number and a bool never an
integer, but an int is accepted for a float. A list from YAML is accepted for a tuple field
(strict mode alone would want a Python tuple), and :data:`Floats` also takes one number for a
one-element tuple (``--temperatures 0.2``). Cross-field rules are validators that raise
``ConfigError(key, problem)`` with ``key`` relative to the object they check; the error's location
supplies the prefix.

This module imports only pydantic and :mod:`dmf_ray.errors`, so the core can use it freely.
"""

from __future__ import annotations

import functools
import types
import typing
from collections.abc import Mapping
from typing import Annotated, Any, TypeVar

from pydantic import BeforeValidator, ConfigDict, Field, Strict, StrictBool, StrictStr, Tag, TypeAdapter, ValidationError

from dmf_ray.errors import ConfigError

T = TypeVar("T")

# Unknown keys are errors; NaN and infinities are never a valid number of ours.
SECTION = ConfigDict(extra="forbid", allow_inf_nan=False)

Int = Annotated[int, Strict()]
Float = Annotated[float, Strict()]  # strict float still takes an int (and stores a float)
Bool = StrictBool
Str = StrictStr
PositiveInt = Annotated[int, Strict(), Field(ge=1)]
PositiveFloat = Annotated[float, Strict(), Field(gt=0)]
Fraction = Annotated[float, Strict(), Field(ge=0, le=1)]


def _one_or_many(value: Any) -> Any:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return [value]
    return value


Floats = Annotated[tuple[Float, ...], BeforeValidator(_one_or_many)]
PositiveFloats = Annotated[tuple[PositiveFloat, ...], BeforeValidator(_one_or_many), Field(min_length=1)]

_YAML_HINT = " (YAML reads numbers like 1e-4 as strings; write 1.0e-4)"
_MAPPING_TYPES = {"dataclass_type", "dataclass_exact_type", "dict_type", "model_type", "model_attributes_type"}
_MESSAGES = {
    "int_type": "must be an integer, got {input!r}",
    "float_type": "must be a number, got {input!r}",
    "bool_type": "must be true or false, got {input!r}",
    "string_type": "must be a string, got {input!r}",
    "finite_number": "must be a finite number, got {input!r}",
    "greater_than": "must be > {gt}, got {input!r}",
    "greater_than_equal": "must be >= {ge}, got {input!r}",
    "less_than": "must be < {lt}, got {input!r}",
    "less_than_equal": "must be <= {le}, got {input!r}",
    "literal_error": "must be one of {expected}, got {input!r}",
    "missing": "required",
    "tuple_type": "must be a list, got {input!r}",
    "list_type": "must be a list, got {input!r}",
    "string_too_short": "must not be empty",
    "too_long": "must have at most {max_length} items, got {actual_length}",
}


@functools.cache
def _adapter(cls: type) -> TypeAdapter:
    return TypeAdapter(cls)


def validate(cls: type[T], raw: Any, prefix: str = "", root: str = "config") -> T:
    """Build ``cls`` from plain data; ConfigError naming the dotted key of the first problem.

    ``prefix`` is prepended to every key (``"model"`` for a bare model section); ``root`` names
    the whole input when it is not a mapping at all.
    """
    try:
        return _adapter(cls).validate_python(raw)
    except ValidationError as exc:
        raise config_error(exc, cls, prefix, root) from None


def config_error(exc: ValidationError, cls: type, prefix: str = "", root: str = "config") -> ConfigError:
    """The first error of ``exc`` (raised validating ``cls``) as a one-line ConfigError."""
    err = exc.errors(include_url=False)[0]
    keys, known, tp = _walk(cls, err["loc"])
    field = ".".join(k for k in (prefix, *keys) if k)
    kind, value, ctx = err["type"], err.get("input"), err.get("ctx") or {}
    if kind == "value_error" and isinstance(ctx.get("error"), ConfigError):
        inner = ctx["error"]
        return ConfigError(".".join(k for k in (field, inner.field) if k), inner.problem)
    field = field or root
    if kind in ("unexpected_keyword_argument", "extra_forbidden"):
        return ConfigError(field, f"unknown key (known: {', '.join(sorted(known))})")
    if kind in ("union_tag_invalid", "union_tag_not_found"):
        tags = ", ".join(repr(t) for t in _tagged_members(_strip(tp)) or ())
        got = f", got {ctx['tag']!r}" if "tag" in ctx else ""
        return ConfigError(f"{field}.type", f"{'must be' if got else 'required:'} one of {tags}{got}")
    if kind in _MAPPING_TYPES:
        return ConfigError(field, f"must be a mapping, got {type(value).__name__}")
    if kind == "too_short":
        if ctx.get("min_length") == 1:
            return ConfigError(field, "must not be empty")
        return ConfigError(field, f"must have at least {ctx['min_length']} items, got {ctx['actual_length']}")
    if kind == "value_error":
        return ConfigError(field, str(ctx["error"]))
    template = _MESSAGES.get(kind)
    problem = template.format(input=value, **ctx) if template else err["msg"]
    if kind in ("int_type", "float_type") and _is_number_text(value):
        problem += _YAML_HINT
    return ConfigError(field, problem)


def _is_number_text(value: Any) -> bool:
    if not isinstance(value, str):
        return False
    try:
        float(value)
    except ValueError:
        return False
    return True


def _walk(tp: Any, loc: tuple[Any, ...]) -> tuple[list[str], tuple[str, ...], Any]:
    """Dotted keys of a pydantic error location, the keys known where it ends, and its type.

    List indices are dropped (``drift.temperatures``, not ``drift.temperatures.1``) and the tags
    pydantic inserts for a discriminated union (``params.optim.lr.float.low``) are skipped.
    """
    keys: list[str] = []
    known: tuple[str, ...] = ()
    for item in loc:
        tp = _strip(tp)
        members = _tagged_members(tp)
        if members is not None and item in members:
            tp = members[item]
            continue
        fields = getattr(tp, "__pydantic_fields__", None)
        origin = typing.get_origin(tp)
        if fields is not None:
            known = tuple(fields)
            tp = fields[item].annotation if item in fields else None
        elif origin in (dict, Mapping):
            known = ()
            tp = typing.get_args(tp)[1]
        elif origin in (tuple, list) and isinstance(item, int):
            tp = typing.get_args(tp)[0]
            continue
        else:
            tp = None
        keys.append(str(item))
    return keys, known, tp


def _strip(tp: Any) -> Any:
    """``tp`` without Annotated metadata and without ``None`` in an Optional."""
    while typing.get_origin(tp) is Annotated:
        tp = typing.get_args(tp)[0]
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        members = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(members) == 1:
            return _strip(members[0])
    return tp


def _tagged_members(tp: Any) -> dict[str, Any] | None:
    """{tag: member} of a discriminated union of sections, else None."""
    if typing.get_origin(tp) not in (typing.Union, types.UnionType):
        return None
    out: dict[str, Any] = {}
    for member in typing.get_args(tp):
        tag = next((m.tag for m in getattr(member, "__metadata__", ()) if isinstance(m, Tag)), None)
        fields = getattr(_strip(member), "__pydantic_fields__", None)
        if tag is None and fields is not None and "type" in fields:
            tag = typing.get_args(fields["type"].annotation)[0]
        if tag is None:
            return None
        out[tag] = member
    return out


def plain(value: Any) -> Any:
    """Nested dicts / tuples as YAML- and JSON-ready dicts / lists (the form configs load from)."""
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value

