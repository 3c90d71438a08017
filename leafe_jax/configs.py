"""Typed frozen configs: the one mechanism every library config uses.

A config is a ``@config`` class (a frozen, keyword-only dataclass) whose fields are checked
in ``__post_init__``: the declared type (an ``int`` field takes no float and no bool, a
``float`` field takes ints and refuses NaN / inf, a tuple field takes a list or tuple of its
element type) and the bounds declared with ``field(default, lo=, hi=, choices=)``. Nested
configs are fields whose type is another ``@config`` class. ``from_dict`` builds one from a
plain (e.g. TOML) dict, refusing unknown keys; every error names the key by its dotted path
(``stage1.explore.budget must be >= 1, got 0``), so a bad value is caught when the config is
read, not when the stage that uses it runs. ``to_dict`` / ``diff`` serve stage bookkeeping,
``add_flags`` / ``from_flags`` derive command-line flags from the same classes.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import types
import typing


class ConfigError(ValueError):
    """A config value of the wrong type, out of range, or unknown; ``path`` is its dotted key."""

    def __init__(self, path: str, msg: str):
        self.path, self.msg = path, msg
        super().__init__(f"{path} {msg}" if path else msg)

    def under(self, prefix: str) -> "ConfigError":
        return ConfigError(f"{prefix}.{self.path}" if self.path else prefix, self.msg)


def field(default, *, lo=None, hi=None, lo_open=False, choices=None, doc: str = ""):
    """A config field with bounds: ``lo <= value`` (``lo < value`` if ``lo_open``),
    ``value <= hi``, or ``value in choices`` (for tuples: every element)."""
    meta = {"lo": lo, "hi": hi, "lo_open": lo_open, "choices": choices, "doc": doc}
    if isinstance(default, (list, dict)) or dataclasses.is_dataclass(default):
        return dataclasses.field(default_factory=lambda: default, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def config(cls):
    """Decorator: frozen keyword-only dataclass with typed, bounded fields."""
    user_post = cls.__dict__.get("__post_init__")

    def __post_init__(self):
        _check_fields(self)
        if user_post is not None:
            try:
                user_post(self)
            except ConfigError:
                raise
            except ValueError as e:
                raise ConfigError("", str(e)) from None

    cls.__post_init__ = __post_init__
    return dataclasses.dataclass(frozen=True, kw_only=True)(cls)


def _hints(cls) -> dict:
    return typing.get_type_hints(cls)


def _coerce(path: str, tp, v):
    """``v`` as type ``tp`` (no lossy conversion), or a ``ConfigError``."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if v is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(path, a, v)
            except ConfigError as e:
                errors.append(e.msg)
        raise ConfigError(path, errors[0] if errors else f"got {v!r}")
    if origin is tuple:
        if isinstance(v, str) or not isinstance(v, (list, tuple)):
            raise ConfigError(path, f"must be a list, got {v!r}")
        (elem, *_rest) = typing.get_args(tp) or (object,)
        return tuple(_coerce(f"{path}[{i}]", elem, x) for i, x in enumerate(v))
    if tp is bool:
        if not isinstance(v, bool):
            raise ConfigError(path, f"must be true or false, got {v!r}")
        return v
    if tp is int:
        if isinstance(v, bool) or not isinstance(v, int):
            raise ConfigError(path, f"must be an integer, got {v!r}")
        return v
    if tp is float:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise ConfigError(path, f"must be a number, got {v!r}")
        if not math.isfinite(v):
            raise ConfigError(path, f"must be finite, got {v!r}")
        return float(v)
    if tp is str:
        if not isinstance(v, str):
            raise ConfigError(path, f"must be a string, got {v!r}")
        return v
    if dataclasses.is_dataclass(tp):
        if isinstance(v, tp):
            return v
        raise ConfigError(path, f"must be a {tp.__name__} section, got {v!r}")
    return v


def _check_fields(obj) -> None:
    hints = _hints(type(obj))
    for f in dataclasses.fields(obj):
        v = _coerce(f.name, hints[f.name], getattr(obj, f.name))
        if v is not getattr(obj, f.name):
            object.__setattr__(obj, f.name, v)
        m = f.metadata
        values = v if isinstance(v, tuple) else (v,)
        for x in values:
            if x is None or isinstance(x, bool) or dataclasses.is_dataclass(x):
                continue
            if m.get("choices") is not None and x not in m["choices"]:
                raise ConfigError(f.name, f"must be one of {list(m['choices'])}, got {x!r}")
            lo, hi = m.get("lo"), m.get("hi")
            if lo is not None and (x <= lo if m.get("lo_open") else x < lo):
                raise ConfigError(f.name, f"must be {'>' if m.get('lo_open') else '>='} {lo}, got {x!r}")
            if hi is not None and x > hi:
                raise ConfigError(f.name, f"must be <= {hi}, got {x!r}")


def from_dict(cls, d: dict, *, base=None, path: str = ""):
    """An instance of config class ``cls`` from a nested dict (a TOML document), starting from
    ``base`` (default: the class defaults); unknown keys and bad values are refused by path."""
    if not isinstance(d, dict):
        raise ConfigError(path, f"must be a section (a table of keys), got {d!r}")
    base = cls() if base is None else base
    hints = _hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
        where = f"[{path}]" if path else "the config"
        raise ConfigError("", f"unknown key(s) in {where}: {unknown}; known: {sorted(names)}")
    kw = {}
    for name in names:
        cur = getattr(base, name)
        sub = f"{path}.{name}" if path else name
        if name not in d:
            kw[name] = cur
        elif dataclasses.is_dataclass(hints[name]):
            kw[name] = from_dict(hints[name], d[name], base=cur, path=sub)
        else:
            kw[name] = d[name]
    try:
        return cls(**kw)
    except ConfigError as e:
        raise e.under(path) if path else e from None


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def diff(a, b, prefix: str = "") -> list[str]:
    """Dotted keys where two nested dicts differ."""
    if not (isinstance(a, dict) and isinstance(b, dict)):
        return [prefix or "(value)"] if a != b else []
    return [k for key in sorted(set(a) | set(b))
            for k in diff(a.get(key), b.get(key), f"{prefix}.{key}" if prefix else key)]


def flat_fields(cfg, prefix: str = ""):
    """``(dotted name, type, default, doc)`` of every leaf field of the config instance
    ``cfg`` (defaults are its values: a nested section keeps its parent's defaults)."""
    hints = _hints(type(cfg))
    for f in dataclasses.fields(cfg):
        name, value = f"{prefix}{f.name}", getattr(cfg, f.name)
        if dataclasses.is_dataclass(hints[f.name]):
            yield from flat_fields(value, name + ".")
        else:
            yield name, hints[f.name], value, f.metadata.get("doc", "")


def _scalar(tp):
    """``int | None`` -> ``int`` (the type a flag parses)."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return next(a for a in typing.get_args(tp) if a is not type(None))
    return tp


def add_flags(parser: argparse.ArgumentParser, cls, *, skip=()) -> None:
    """One ``--flag`` per leaf field of ``cls`` (``sft.learning_rate`` -> ``--learning-rate``;
    defaults and help from the class), so the CLI cannot drift from the library config."""
    for name, tp, default, doc in flat_fields(cls()):
        tp = _scalar(tp)
        if name in skip:
            continue
        flag = "--" + name.rsplit(".", 1)[-1].replace("_", "-")
        help_ = f"{doc + '; ' if doc else ''}default {default!r} ({cls.__name__}.{name})"
        flag_name = flag.removeprefix("--")
        if tp is bool:
            parser.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction,
                                default=default, help=help_)
        else:
            conv = {int: int, float: float, str: str}.get(tp, str)
            parser.add_argument(flag, dest=name, type=conv, default=default, help=help_,
                                metavar=flag_name.upper().replace("-", "_"))


def from_flags(cls, args: argparse.Namespace, *, skip=()):
    """The config ``add_flags`` described, from parsed arguments (validated as ever)."""
    nested: dict = {}
    for name, _tp, _default, _doc in flat_fields(cls()):
        if name in skip:
            continue
        *secs, leaf = name.split(".")
        d = nested
        for s in secs:
            d = d.setdefault(s, {})
        d[leaf] = getattr(args, name)
    return from_dict(cls, nested)
