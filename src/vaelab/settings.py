"""Settings declared once. Each configurable class (a model, a likelihood, a network, a KL
schedule, a quantizer, a data set) has a nested ``Settings``: a pydantic model with one field per
key its YAML may hold, giving the key's type, default, allowed values (a ``Literal``), range
(``ge``/``gt``/``le``/``lt``) and a one-line meaning (the field's description)::

    class Settings(VAE.Settings):
        k: int = setting(5, "samples of q(z|x) per example in training", ge=1)

``validate(Settings, node, "model")`` checks a config node against it before anything is built:
a key the schema does not have is refused (``extra="forbid"``), and a wrong value becomes the
one-line ``UserError`` of the rest of vaelab, worded from the field itself ("model.k must be a
whole number ≥ 1, got 0; set model.k=<N>"). A rule that joins several fields, or needs the rest of
the run's config, lives with the class that owns it (its ``check_config``); a field validator
raising ``ValueError("<the whole message>")`` gives a message of its own. The YAML files keep a
value for every field (so ``key=value`` needs no ``+``); ``tests/test_settings.py`` proves that
they agree with the schemas. Pydantic rather than Hydra's structured configs: OmegaConf 2.3 has
types but no ranges, no ``Literal`` and no per-field meanings, and the schemas here also check the
values of configs composed outside Hydra (the Python API, checkpoints of earlier runs)."""

from __future__ import annotations

import difflib
import re
import types
import typing
from collections.abc import Callable
from typing import Any, Literal

import annotated_types
from omegaconf import OmegaConf
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.fields import FieldInfo

from vaelab.checks import and_list, plain
from vaelab.errors import UserError

REFERENCE = re.compile(r"^\$\{([\w.]+)\}$")


class Settings(BaseModel):
    """Base of the schemas: unknown keys refused, no silent conversions (``"1"`` is not 1, 1 is
    not ``true``; an integer is a number)."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    @classmethod
    def fields(cls) -> dict[str, FieldInfo]:
        return cls.model_fields

    @classmethod
    def default(cls, name: str) -> Any:
        """The declared default of ``name`` (for a constructor's keyword default)."""
        return cls.model_fields[name].get_default(call_default_factory=True)


def setting(
    default: Any = ...,
    doc: str = "",
    *,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    min_length: int | None = None,
    unit: str = "",
    says: str | None = None,
    message: str | None = None,
    belongs: str | None = None,
) -> Any:
    """A schema field. ``default=...``: no default, each config file gives its own value (a data
    set's image shape). ``unit`` follows a bound in messages ("≥ 0 nats"); ``says`` replaces the
    requirement worded from the type and bounds ("a number ≥ 0"); ``message`` the whole message,
    a template with ``{key}`` and ``{value}``. ``belongs``: a model's setting given to another
    model is refused with ``model.<key> <belongs>`` ("belongs to the IWAE bound; use model=iwae")."""
    extra = {k: v for k, v in (("unit", unit), ("says", says), ("message", message), ("belongs", belongs)) if v}
    return Field(
        default,
        description=doc,
        ge=ge,
        gt=gt,
        le=le,
        lt=lt,
        min_length=min_length,
        json_schema_extra=extra or None,
    )


# -- checking a config node -------------------------------------------------------------------------


def source_of(node: Any, name: str) -> str | None:
    """The key that ``node.name`` follows (``${size.latent_dim}``), or None for its own value."""
    if not OmegaConf.is_dict(node) or name not in node:
        return None
    raw = OmegaConf.to_container(node, resolve=False).get(name)
    match = REFERENCE.match(raw) if isinstance(raw, str) else None
    return match.group(1) if match else None


def validate(
    schema: type[Settings],
    node: Any,
    prefix: str,
    unknown: Callable[[str], str] | None = None,
    skip: tuple[str, ...] = (),
) -> Settings:
    """``node`` (a DictConfig or dict) checked against ``schema``; ``prefix`` is its place in the run
    config ("model", "model.quantizer"). Keys starting with ``_`` (Hydra's ``_target_``) and those
    in ``skip`` (another schema's) are not the schema's. ``unknown(key)`` words the message for a
    key the schema lacks (by default: not a setting, drop it)."""
    values = {k: v for k, v in plain(node).items() if not str(k).startswith("_") and k not in skip}
    for key in values:
        if key not in schema.model_fields:
            raise UserError(unknown(key) if unknown else f"{prefix}.{key} is not a setting here; drop it")
    try:
        return schema.model_validate(values)
    except ValidationError as error:
        raise UserError(explain(schema, error.errors()[0], values, node, prefix)) from None


def explain(schema: type[Settings], error: dict, values: dict, node: Any, prefix: str) -> str:
    """The one-line message for pydantic's ``error`` on ``values``."""
    if error["type"] == "value_error":  # a validator's own message
        return str(error["ctx"]["error"])
    name = str(error["loc"][0])
    field = schema.model_fields[name]
    if error["type"] == "missing":  # a key removed from the config (~key) that has no default
        return f"{prefix}.{name} is required ({field.description}); set {prefix}.{name}=<value>"
    value = values[name]
    key, source = f"{prefix}.{name}", source_of(node, name)
    if source and isinstance(value, list):
        key = f"{key} (from {source})"
    elif source:
        key = source
    extra = field.json_schema_extra or {}
    if "message" in extra:
        return extra["message"].format(key=key, value=value)
    says, tail = requirement(field, key)
    return f"{key} must be {says}, got {value!r}{tail}"


def bounds(field: FieldInfo) -> dict[str, float]:
    kinds = {"ge": annotated_types.Ge, "gt": annotated_types.Gt, "le": annotated_types.Le, "lt": annotated_types.Lt}
    kinds["min_length"] = annotated_types.MinLen
    return {
        kind: getattr(meta, kind) for meta in field.metadata for kind, cls in kinds.items() if isinstance(meta, cls)
    }


def number(x: float) -> str:
    return f"{x:g}"


def interval(found: dict[str, float], unit: str = "") -> str:
    low = ("[", found["ge"]) if "ge" in found else ("(", found["gt"]) if "gt" in found else None
    high = ("]", found["le"]) if "le" in found else (")", found["lt"]) if "lt" in found else None
    if low and high:
        return f"in {low[0]}{number(low[1])}, {number(high[1])}{high[0]}{unit}"
    if low:
        return f"{'≥' if low[0] == '[' else '>'} {number(low[1])}{unit}"
    if high:
        return f"{'≤' if high[0] == ']' else '<'} {number(high[1])}{unit}"
    return "a number"


def requirement(field: FieldInfo, key: str) -> tuple[str, str]:
    """What ``field`` must be, in words, and what the message adds after the value."""
    extra = field.json_schema_extra or {}
    annotation, found = field.annotation, bounds(field)
    options = typing.get_args(annotation)
    nullable = typing.get_origin(annotation) in (typing.Union, types.UnionType) and type(None) in options
    base = next(a for a in options if a is not type(None)) if nullable else annotation
    tail = ""
    if "says" in extra:
        says = extra["says"]
    elif base is bool:
        says = "true or false"
    elif typing.get_origin(base) is Literal:
        says = and_list([str(o) for o in typing.get_args(base)], "or")
    elif base is int:
        low = found.get("ge", found.get("gt", -1) + 1) if ("ge" in found or "gt" in found) else None
        says = f"a whole number ≥ {low}" if low is not None else "a whole number"
        tail = f"; set {key}=<N>"
    elif typing.get_origin(base) is list:
        says = ("a non-empty list" if found.get("min_length") else "a list") + " of positive integers"
    elif base is str:
        says = "a string"
    elif base is dict or typing.get_origin(base) is dict:
        says = "a group of settings (key: value)"
    else:
        says = interval(found, extra.get("unit", ""))
    return (f"null or {says}" if nullable and "says" not in extra else says), tail


def not_a_setting(path: str, label: str, names: list[str]) -> str:
    """The message for ``path`` (``data.batchsize``), which ``label`` (``data=digits``) does not
    take: with the closest of its ``names`` if one is close."""
    prefix, _, key = path.rpartition(".")
    close = difflib.get_close_matches(key, names, 1)
    return (
        f"{path} is not a setting of {label}" + (f" (did you mean {prefix}.{close[0]}?)" if close else "") + "; drop it"
    )


def not_an_option_setting(path: str, label: str, takes: list[str]) -> str:
    """The message for ``path`` (``likelihood.sigma``), which option ``label`` (``likelihood=bernoulli``)
    does not take, listing the settings it does take."""
    return f"{path} is not a setting of {label}" + (
        f" (it takes {and_list(takes)}); drop it" if takes else ", which takes none; drop it"
    )


def describe(schema: type[Settings]) -> list[tuple[str, str, str, str]]:
    """(key, type and range, default, meaning) of each field, for docs and ``--help``-like tables."""
    rows = []
    for name, field in schema.model_fields.items():
        says, _ = requirement(field, name)
        default = "(each config file's)" if field.is_required() else repr(field.get_default())
        rows.append((name, says, default, field.description or ""))
    return rows
