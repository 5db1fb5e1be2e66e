"""Frozen, validated settings dataclasses built from defaults, a TOML file, the environment and flags.

A service declares its settings as a frozen dataclass whose __post_init__ validates with the checks
below; `load` reads TOML (one nested table per nested dataclass field), then `EAGLEEYE_...` environment
variables, then flags, and reports any problem as one ConfigError naming the setting, the value and
the rule. Precedence: flag, environment, file, default.
"""

from __future__ import annotations

import dataclasses
import json
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar, cast

from eagleeye.common.cli import ConfigError

T = TypeVar("T")


def positive(name: str, value: float) -> None:
    if not value > 0:
        raise ConfigError(f"{name}={value}: must be > 0")


def at_least(name: str, value: float, low: float) -> None:
    if not value >= low:
        raise ConfigError(f"{name}={value}: must be >= {low}")


def in_range(name: str, value: float, low: float, high: float) -> None:
    if not low <= value <= high:
        raise ConfigError(f"{name}={value}: must be in [{low}, {high}]")


def one_of(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{name}={value!r}: must be one of {', '.join(choices)}")


_SCALARS: dict[str, type | tuple[type, ...]] = {"int": int, "float": (int, float), "bool": bool, "str": str}


def _coerce(name: str, value: Any, target: str) -> Any:
    """Check a TOML value against a field's annotation (ints are accepted for floats)."""
    if target in ("Path | None", "Path"):
        if not isinstance(value, str):
            raise ConfigError(f"{name}={value!r}: must be a file path string")
        return Path(value)
    if target.startswith("dict["):
        if not isinstance(value, dict):
            raise ConfigError(f"{name}={value!r}: must be a table")
        return value  # its own dataclass checks the contents
    if target == "tuple[float, float]":
        if not (isinstance(value, list) and len(value) == 2 and
                all(isinstance(v, int | float) and not isinstance(v, bool) for v in value)):
            raise ConfigError(f"{name}={value!r}: must be a pair of numbers, e.g. [95, 5]")
        return (float(value[0]), float(value[1]))
    want = _SCALARS.get(target)
    if want is None:
        raise ConfigError(f"{name}: cannot be set from a file")
    if (isinstance(value, bool) and target != "bool") or not isinstance(value, want):
        raise ConfigError(f"{name}={value!r}: must be a {target}")
    return float(cast(float, value)) if target == "float" else value


ENV_PREFIX = "EAGLEEYE_"
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off", "")


def env_name(key: str, table: str = "") -> str:
    """The environment variable of a setting: EAGLEEYE_MAX_BATCH, EAGLEEYE_HEALTH_TEMP_CRITICAL_C (table health)."""
    return ENV_PREFIX + (f"{table}_{key}" if table else key).upper()


def _from_text(name: str, text: str, target: str) -> Any:
    """An environment variable's text as the value a TOML file would hold for the same setting."""
    try:
        if target == "int":
            return int(text)
        if target == "float":
            return float(text)
        if target == "bool":
            if text.strip().lower() not in (*_TRUE, *_FALSE):
                raise ValueError
            return text.strip().lower() in _TRUE
        if target == "tuple[float, float]":
            return [float(v) for v in text.split(",")]
        if target.startswith("dict["):
            return json.loads(text)
    except ValueError:
        want = {"int": "an integer", "float": "a number", "bool": "true or false",
                "tuple[float, float]": "two numbers separated by a comma, e.g. 95,5"}.get(
                    target, 'a JSON object, e.g. {"FAILOVER": {"score_threshold": 0.4}}')
        raise ConfigError(f"{name}={text!r}: must be {want}") from None
    return text


def _env_values(cls: type[Any], env: Mapping[str, str], nested: dict[str, type[Any]],
                flag_only: tuple[str, ...]) -> dict[str, Any]:
    """The settings given as environment variables: {field: value}, {table: {field: value}} for tables."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.name in nested:
            table = {g.name: _coerce(env_name(g.name, f.name), _from_text(env_name(g.name, f.name), env[
                env_name(g.name, f.name)], str(g.type)), str(g.type))
                for g in dataclasses.fields(nested[f.name]) if env_name(g.name, f.name) in env}
            if table:
                out[f.name] = table
            continue
        name = env_name(f.name)
        if name not in env:
            continue
        if f.name in flag_only:
            raise ConfigError(f"{name}: {f.name} cannot be set from the environment; only the "
                              f"--{f.name.replace('_', '-')} flag turns it on")
        out[f.name] = _coerce(name, _from_text(name, env[name], str(f.type)), str(f.type))
    return out


def _apply(cls: type[Any], prefix: str, table: dict[str, Any], nested: dict[str, type[Any]]) -> dict[str, Any]:
    fields = {f.name: f for f in dataclasses.fields(cls)}
    out: dict[str, Any] = {}
    for key, value in table.items():
        f = fields.get(key)
        if f is None:
            raise ConfigError(f"{prefix}{key}: unknown setting (known: {', '.join(sorted(fields))})")
        if key in nested:
            if not isinstance(value, dict):
                raise ConfigError(f"{prefix}{key}: must be a table ([{key}])")
            out[key] = nested[key](**_apply(nested[key], f"{key}.", value, {}))
        else:
            out[key] = _coerce(prefix + key, value, str(f.type))
    return out


def load(cls: type[T], file: Path | None, flags: dict[str, Any],
         nested: dict[str, type[Any]] | None = None, nested_flags: dict[str, str] | None = None,
         flag_only: tuple[str, ...] = (), env: Mapping[str, str] | None = None) -> T:
    """Defaults, then the TOML `file`, then `env` (EAGLEEYE_... variables), then `flags` (None: not given).

    `nested` maps a field to its dataclass (a TOML table); `nested_flags` maps a flag to the nested
    field it sets (e.g. {"require_gpu": "health"}); `flag_only` names fields only a flag may set.
    Variables named like no setting are ignored (EAGLEEYE_ is shared with deployment scripts).
    """
    nested = nested or {}
    nested_flags = nested_flags or {}
    values: dict[str, Any] = {}
    if file is not None:
        try:
            values = _apply(cls, "", tomllib.loads(file.read_text()), nested)
        except OSError as e:
            raise ConfigError(f"config file {str(file)!r}: {e.strerror}") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"config file {str(file)!r}: not valid TOML: {e}") from None
        for key in flag_only:
            if key in values:
                raise ConfigError(f"{key}: cannot be set in a config file; only the --{key.replace('_', '-')} "
                                  "flag turns it on")
    for key, value in _env_values(cls, env or {}, nested, flag_only).items():
        if key in nested:
            values[key] = dataclasses.replace(values.get(key, nested[key]()), **value)
        else:
            values[key] = value
    for key, value in flags.items():
        if value is None:
            continue
        if key in nested_flags:
            table = nested_flags[key]
            values[table] = dataclasses.replace(values.get(table, nested[table]()), **{key: value})
        else:
            values[key] = value
    try:
        return cls(**values)
    except TypeError as e:
        raise ConfigError(str(e)) from None
