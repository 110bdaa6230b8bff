"""Loading `params.yaml` sections into typed, validated dataclasses.

Each module owns the dataclass for its own section (``DataConfig`` in ``download``,
``TrainConfig`` in ``train``...); this module only knows how to build one from a mapping so that
an unknown or mistyped key fails loudly instead of being ignored, and gives the dataclasses one way
to range-check their numbers (`check_range`). NaN and infinity are refused for every float, since
no key means anything with them and a NaN passes every ``<``/``>`` test unnoticed.
"""

from __future__ import annotations

import dataclasses
import math
import operator
import os
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml

from pipeline.core.errors import PipelineError

T = TypeVar("T")

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def read_params(path: str | os.PathLike = "params.yaml") -> dict[str, Any]:
    """Read a params file; a missing or malformed file is a `PipelineError`."""
    path = Path(path)
    try:
        params = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise PipelineError(f"{path} not found: run from the project root or pass --params") from None
    except yaml.YAMLError as exc:
        raise PipelineError(f"{path} is not valid YAML: {exc}") from None
    if not isinstance(params, dict):
        raise PipelineError(f"{path} must hold a mapping of sections, got {type(params).__name__}")
    return params


def _coerce_union(value: Any, options: tuple[Any, ...], where: str) -> Any:
    if value is None and type(None) in options:
        return None
    errors = []
    for option in options:
        if option is type(None):
            continue
        try:
            return _coerce(value, option, where)
        except PipelineError as exc:
            errors.append(str(exc))
    raise PipelineError(errors[0] if errors else f"{where}: unexpected value {value!r}")


def _coerce_container(value: Any, origin: Any, args: tuple[Any, ...], where: str) -> Any:
    if origin is dict:
        if not isinstance(value, dict):
            raise PipelineError(f"{where} must be a mapping, got {value!r}")
        value_type = args[1] if args else Any
        return {k: _coerce(v, value_type, f"{where}.{k}") for k, v in value.items()}
    if not isinstance(value, (list, tuple)):
        raise PipelineError(f"{where} must be a list, got {value!r}")
    item_type = args[0] if args else Any
    return origin(_coerce(v, item_type, f"{where}[{i}]") for i, v in enumerate(value))


def _coerce_scalar(value: Any, annotation: type, where: str) -> Any:
    if annotation is float and not isinstance(value, bool):
        if isinstance(value, (int, float)):
            return _finite(float(value), where)
        if isinstance(value, str):
            try:
                number = float(value)  # YAML reads 2e-4 (no dot) as a string
            except ValueError:
                pass
            else:
                return _finite(number, where)
    is_bool_mismatch = annotation is not bool and isinstance(value, bool)
    if is_bool_mismatch or not isinstance(value, annotation):
        raise PipelineError(f"{where} must be {annotation.__name__}, got {value!r}")
    return value


def _finite(value: float, where: str) -> float:
    if not math.isfinite(value):
        raise PipelineError(f"{where} must be a finite number, got {value}")
    return value


def _coerce(value: Any, annotation: Any, where: str) -> Any:
    """Check (and lightly coerce) one value against a dataclass field annotation."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return _coerce_union(value, typing.get_args(annotation), where)
    if origin is typing.Literal:
        choices = typing.get_args(annotation)
        if value not in choices:
            raise PipelineError(f"{where} must be one of {', '.join(map(repr, choices))}, got {value!r}")
        return value
    if dataclasses.is_dataclass(annotation):
        return from_mapping(annotation, value, where)
    if origin in (dict, list, tuple):
        return _coerce_container(value, origin, typing.get_args(annotation), where)
    if isinstance(annotation, type) and annotation is not Any:
        return _coerce_scalar(value, annotation, where)
    return value


def from_mapping(cls: type[T], mapping: Any, where: str) -> T:
    """Build dataclass `cls` from `mapping`, naming the offending key on any mismatch."""
    if mapping is None:
        mapping = {}
    if not isinstance(mapping, dict):
        raise PipelineError(f"{where} must be a mapping, got {mapping!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(mapping) - set(fields))
    if unknown:
        raise PipelineError(
            f"unknown key(s) {', '.join(f'{where}.{k}' for k in unknown)}; "
            f"known keys: {', '.join(sorted(fields))}"
        )
    kwargs = {name: _coerce(value, hints[name], f"{where}.{name}") for name, value in mapping.items()}
    try:
        return cls(**kwargs)
    except TypeError as exc:  # a required field without a default is missing
        raise PipelineError(f"{where}: {exc}") from None
    except ValueError as exc:  # __post_init__ validation
        message = str(exc)
        # "lr must be > 0" names a key of this section: say it as the dotted key, "train.lr ..."
        key = message.split(" ", 1)[0]
        joined = f"{where}.{message}" if key in fields else f"{where}: {message}"
        raise PipelineError(joined) from None


def check_range(
    obj: Any,
    names: str | tuple[str, ...],
    *,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
) -> None:
    """Refuse each field `names` of `obj` outside the bounds, or NaN/inf, with a ValueError naming it.

    For `__post_init__`: ``check_range(self, ("ngf", "ndf"), ge=1)``, ``check_range(self, "beta1",
    ge=0, lt=1)``. A field that is None (an optional key left unset) passes.
    """
    tests = ((ge, operator.ge), (gt, operator.gt), (le, operator.le), (lt, operator.lt))
    for name in (names,) if isinstance(names, str) else names:
        value = getattr(obj, name)
        if value is None:
            continue
        number = float(value)
        # "passes every bound" rather than "fails one": NaN, false in every comparison, fails too.
        inside = all(test(number, bound) for bound, test in tests if bound is not None)
        if not (math.isfinite(number) and inside):
            raise ValueError(f"{name} must be {_describe_bounds(ge, gt, le, lt)}, got {value!r}")


def _describe_bounds(ge, gt, le, lt) -> str:
    low = f"[{ge}" if ge is not None else f"({gt}" if gt is not None else None
    high = f"{le}]" if le is not None else f"{lt})" if lt is not None else None
    if low and high:
        return f"in {low}, {high}"
    if low:
        return f">= {ge}" if ge is not None else f"> {gt}"
    return f"<= {le}" if le is not None else f"< {lt}"


def load_section(params_path: str | os.PathLike, section: str, cls: type[T]) -> T:
    """Read one section of a params file into dataclass `cls`."""
    return section_of(read_params(params_path), section, cls, params_path)


def section_of(
    params: dict[str, Any], section: str, cls: type[T], where: str | os.PathLike = "params.yaml"
) -> T:
    """One section of an already read params mapping into dataclass `cls` (`where` names the file)."""
    if section not in params:
        raise PipelineError(f"{where} has no `{section}:` section")
    return from_mapping(cls, params[section], section)


def to_flat_dict(obj: Any, prefix: str = "") -> dict[str, Any]:
    """Flatten a (nested) dataclass into dotted keys, e.g. for `mlflow.log_params`."""
    return flatten(dataclasses.asdict(obj), prefix)


def flatten(mapping: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings as dotted keys: ``{"train": {"lr": 1}}`` -> ``{"train.lr": 1}``."""
    flat: dict[str, Any] = {}
    for key, value in mapping.items():
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat
