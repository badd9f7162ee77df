"""Typed configuration for every command: dataclass defaults <- YAML recipe <- flags <- ``key=value`` overrides.

A command's config is a tree of dataclasses (its *root*: :class:`~emae.config.Config` for pre-training,
:class:`~emae.config.FinetuneConfig`, ...). Every field is reachable by its dotted name, e.g. ``train.epochs=10``
or ``model.img_size=[224,160]``; values are parsed as YAML. Unknown keys, wrong types and out-of-range values
raise :class:`~emae.errors.ConfigError` with one line naming the key. A root validates itself (``validate()``)
once, when it is loaded: inner layers only assert.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import sys
import types
import typing
from pathlib import Path
from typing import Any, TypeVar, Union

import yaml

from ..errors import ConfigError

RECIPES_DIR = Path(__file__).resolve().parents[1] / "configs"
MAX_INT = 2**31 - 1  # no count, size or seed needs more; bigger ones overflow torch and numpy
Root = TypeVar("Root")


class RootConfig:
    """A command's whole config: its ``command`` name (the one its recipes declare), as a dict, and its checks."""

    command = "pretrain"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def validate(self) -> None:
        raise NotImplementedError


def all_keys(obj: Any, prefix: str = "") -> list[str]:
    """Every leaf key of a config tree, dotted."""
    keys = []
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            keys += all_keys(value, f"{prefix}{f.name}.")
        else:
            keys.append(prefix + f.name)
    return keys


def unknown_key(key: str, root: Any) -> ConfigError:
    known = all_keys(root)
    near = difflib.get_close_matches(key, known, n=1, cutoff=0.5)
    if not near:  # try the last part alone, e.g. "epoch" -> "train.epochs"
        tails = {k.rsplit(".", 1)[-1]: k for k in known}
        hit = difflib.get_close_matches(key.rsplit(".", 1)[-1], list(tails), n=1, cutoff=0.6)
        near = [tails[hit[0]]] if hit else []
    hint = f"; did you mean {near[0]!r}?" if near else ""
    return ConfigError(f"unknown config key {key!r}{hint}")


def show(value: Any) -> str:
    """``repr`` of a value, shortened so that an error stays one readable line."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _type_name(tp: Any) -> str:
    return str(tp).replace("typing.", "").replace("<class '", "").replace("'>", "")


def coerce(key: str, value: Any, tp: Any) -> Any:
    """Check ``value`` against the annotation ``tp``; ints are accepted for floats."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        for option in typing.get_args(tp):
            try:
                return coerce(key, value, option)
            except ConfigError:
                pass
        raise ConfigError(f"{key}: {show(value)} is not a {_type_name(tp)}")
    if tp is type(None):
        if value is None:
            return None
    elif origin is list:
        (item_tp,) = typing.get_args(tp)
        if isinstance(value, (list, tuple)):
            return [coerce(key, v, item_tp) for v in value]
    elif tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # PyYAML reads "1e-3" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
    raise ConfigError(f"{key}: {show(value)} is not a {_type_name(tp)}")


# old spellings still read: field name -> {old value: new value}; a note says so (saved configs convert quietly)
RENAMED_VALUES = {"pixel_loss": {"mse": "l2"}, "pool": {"mean": "avg"}}
_noted: set[tuple[str, str]] = set()


def renamed(key: str, value: Any, quiet: bool = False) -> Any:
    """``value`` in today's vocabulary (:data:`RENAMED_VALUES`), with a one-time note for an old spelling."""
    new = RENAMED_VALUES.get(key.rsplit(".", 1)[-1], {}).get(value) if isinstance(value, str) else None
    if new is None:
        return value
    if not quiet and (key, value) not in _noted:
        _noted.add((key, value))
        print(f"emae: note: {key}={value} is now spelled {key}={new} (the old spelling still works)", file=sys.stderr)
    return new


def apply(obj: Any, data: Any, root: Any = None, prefix: str = "", quiet: bool = False) -> None:
    """Set the values of the nested mapping ``data`` on the config tree ``obj``, checking each key and type.
    ``quiet``: old spellings are converted without a note (configs saved by an older emae)."""
    root = obj if root is None else root
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {show(data)}")
    hints = typing.get_type_hints(type(obj))
    for key, value in data.items():
        full = f"{prefix}{key}"
        if not isinstance(key, str) or key not in hints:
            raise unknown_key(str(full), root)
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            apply(current, value, root, f"{full}.", quiet)
        else:
            setattr(obj, key, coerce(full, renamed(full, value, quiet), hints[key]))


def parse_override(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not of the form key=value")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except Exception:  # noqa: BLE001 - YAMLError, or ValueError/RecursionError from e.g. "2001-13-45"
        value = raw
    return key.strip(), value


def set_key(cfg: Any, key: str, value: Any) -> None:
    """Set a dotted key, e.g. ``set_key(cfg, "train.epochs", 5)``."""
    node: dict = {}
    cursor = node
    parts = key.split(".")
    for p in parts[:-1]:
        cursor = cursor.setdefault(p, {})
    cursor[parts[-1]] = value
    apply(cfg, node)


def resolve_recipe(name: str) -> Path:
    """A YAML path, or the name of a recipe shipped in ``configs/`` (with or without ``.yaml``)."""
    path = Path(name)
    if path.is_file():
        return path
    for candidate in (RECIPES_DIR / name, RECIPES_DIR / f"{name}.yaml"):
        if candidate.is_file():
            return candidate
    known = sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))
    raise ConfigError(f"config file {name!r} not found (shipped recipes: {', '.join(known)})")


def read_recipe(name: str, command: str) -> dict:
    """A recipe's mapping; a recipe names the command it is for (``command: finetune``; none: pretrain)."""
    path = resolve_recipe(name)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except OSError as e:
        raise ConfigError(f"config file {path}: cannot be read ({e.strerror or type(e).__name__})") from None
    except Exception as e:  # noqa: BLE001 - YAMLError, bad UTF-8, or ValueError/RecursionError from odd YAML
        first = (str(e).splitlines() or [type(e).__name__])[0]
        raise ConfigError(f"config file {path}: not valid YAML ({first})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config: expected a mapping, got {show(data)} (config file {path})")
    declared = data.pop("command", "pretrain")
    if declared != command:
        raise ConfigError(f"config file {path} is a recipe for `emae {declared}`, not `emae {command}`")
    return data


def load(root_type: type[Root], config_file: str | None = None, overrides: list[str] | None = None,
         flags: dict[str, Any] | None = None, data: dict | None = None) -> Root:
    """Defaults, then a saved mapping ``data`` or the YAML recipe, then ``flags`` (dotted keys; None values are
    not given), then ``key=value`` overrides; validated once."""
    cfg = root_type()
    if data is not None:
        apply(cfg, data, quiet=True)
    if config_file:
        apply(cfg, read_recipe(config_file, getattr(root_type, "command", "pretrain")))
    for key, value in (flags or {}).items():
        if value is not None:
            set_key(cfg, key, value)
    for text in overrides or []:
        set_key(cfg, *parse_override(text))
    check_leaves(cfg)
    cfg.validate()
    return cfg


def require(ok: bool, key: str, value: Any, allowed: str) -> None:
    if not ok:
        raise ConfigError(f"{key}: {show(value)} is not allowed; {allowed}")


def check_leaves(obj: Any, prefix: str = "") -> None:
    """Type-independent limits on every value: finite floats, ints within MAX_INT, strings without NUL."""
    for f in dataclasses.fields(obj):
        key, value = prefix + f.name, getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            check_leaves(value, key + ".")
            continue
        for v in value if isinstance(value, list) else [value]:
            if isinstance(v, float):
                require(math.isfinite(v), key, value, "values must be finite numbers")
            elif isinstance(v, int) and not isinstance(v, bool):
                require(abs(v) <= MAX_INT, key, value, f"integers must lie within ±{MAX_INT}")
            elif isinstance(v, str):
                require("\0" not in v, key, value, "text must not contain a NUL character")


def positive(section: Any, prefix: str, *names: str, allow_none: bool = True) -> None:
    """One-line errors for fields of ``section`` that are not positive (None passes when ``allow_none``)."""
    for name in names:
        v = getattr(section, name)
        if v is None and allow_none:
            continue
        what = "a positive integer" if isinstance(v, int) and not isinstance(v, bool) else "positive"
        require(v is not None and v > 0, f"{prefix}{name}", v, f"must be {what}" + (" or null" if allow_none else ""))


def choose(value: Any, key: str, allowed: tuple | list) -> None:
    require(value in allowed, key, value, f"choose one of {list(allowed)}")


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)
