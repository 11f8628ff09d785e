"""Recipes and --set: TOML files and KEY=VALUE pairs that give options by name.

Precedence, low to high: defaults, the recipe, --set, explicit command-line flags.
Values are checked with the same click types as the flags, so a bad value reads the same
wherever it came from; an unknown key is an error that names it, and so is an option given
twice under any spelling (`batch-size` and `batch_size`).

TOML values are typed, so a recipe value must also have the TOML type its option expects
before it is converted: `rounds = 2.7` or `rounds = true` is an error, not 2 or 1 rounds.
"""

from __future__ import annotations

import datetime
import json
import os
import sys
from collections.abc import Iterable
from typing import Any, NamedTuple

import click
import tomllib

from dmlcli.algorithms.base import Param
from dmlcli.errors import UsageError

# Values that stand for None in an option whose default is None ("no limit", "not given").
NONE_WORDS = ("none", "null")


class TomlForm(NamedTuple):
    """What an option takes in a recipe: a value of one of these TOML types, or one of these
    words; `expected` says so in an error. A click type whose text form includes words (like
    `all` for --batch-size) declares its form as a `toml_form` class attribute."""

    kinds: frozenset[str]  # TOML type names, as _toml_kind gives them
    words: tuple[str, ...]
    expected: str


BOOLEAN_FORM = TomlForm(frozenset({"boolean"}), (), "true or false")
INTEGER_FORM = TomlForm(frozenset({"integer"}), (), "an integer")
NUMBER_FORM = TomlForm(frozenset({"integer", "float"}), (), "a number")
STRING_FORM = TomlForm(frozenset({"string"}), (), "a string")


def load_recipe(path: str) -> dict:
    if not path:
        raise UsageError("--recipe needs a file name")
    if os.path.exists(path) and not os.path.isfile(path) and not os.path.isdir(path):
        raise UsageError(f"recipe {path} is not a regular file")  # a FIFO or device would block or never end
    try:
        with open(path, "rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise UsageError(f"recipe not found: {path}") from None
    except IsADirectoryError:
        raise UsageError(f"recipe {path} is a directory, not a TOML file") from None
    except OSError as error:
        raise UsageError(f"recipe {path} cannot be read: {error.strerror or error}") from None
    except UnicodeDecodeError as error:
        line = error.object.count(b"\n", 0, error.start) + 1
        raise UsageError(f"recipe {path} is not valid UTF-8 (line {line}); TOML files are UTF-8 text") from None
    except tomllib.TOMLDecodeError as error:
        raise UsageError(f"recipe {path} is not valid TOML: {error}") from None
    except ValueError:  # tomllib's int() refuses integers longer than Python's digit limit
        raise UsageError(f"recipe {path}: an integer has more than {sys.get_int_max_str_digits()} digits") from None


def recipe_options(path: str, params: dict[str, Param], algorithm: str) -> dict:
    """The options a recipe file gives, converted; its `algorithm` key, if any, must name `algorithm`."""
    recipe = load_recipe(path)
    origin = f"recipe {path}"
    named = recipe.pop("algorithm", algorithm)
    if not isinstance(named, str):
        raise UsageError(f"{origin}: 'algorithm' must be a string, got {_described(named)}")
    if named != algorithm:
        raise UsageError(f"{origin} is for {named!r}, not {algorithm!r}")
    return recipe_values(recipe.items(), params, origin)


def recipe_values(items: Iterable[tuple[str, Any]], params: dict[str, Param], origin: str) -> dict:
    """The options (key, TOML value) pairs give, each value checked against its option's TOML type and
    converted; unknown keys and options given twice are errors (what a recipe's top level goes through)."""
    converted = {}
    for raw_key, key, value in _option_keys(items, params, origin):
        converted[key] = _convert_toml(value, params[key], raw_key, origin)
    return converted


def set_options(pairs: tuple[str, ...], params: dict[str, Param]) -> dict:
    """The options --set KEY=VALUE pairs give, converted like the flags' text."""
    split = []
    for pair in pairs:
        key, sep, value = (part.strip() for part in pair.partition("="))
        if not sep or not key:
            raise UsageError(f"--set expects KEY=VALUE, got {pair!r}")
        split.append((key, value))
    converted = {}
    for raw_key, key, value in _option_keys(split, params, "--set"):
        param = params[key]
        if not value:
            # Most often a shell variable that was not set; "none" says none on purpose.
            none = " (or none)" if param.default is None else ""
            raise UsageError(f"--set {raw_key}= has no value; give one{none}")
        converted[key] = None if _means_none(value, param) else _convert(value, param, raw_key, "--set")
    return converted


def _option_keys(items: Iterable[tuple[str, Any]], params: dict[str, Param], origin: str):
    """(key as given, option name, value) of each item; unknown keys and options given twice are errors."""
    spellings: dict[str, str] = {}
    for raw_key, value in items:
        key = raw_key.replace("-", "_")
        if key not in params:
            hint = f" (a [{raw_key}] table; a recipe gives options at its top level)" if isinstance(value, dict) else ""
            raise UsageError(f"{origin}: unknown key {raw_key!r}{hint}")
        if key in spellings:
            earlier = spellings[key]
            twice = f"{raw_key!r} is given twice" if earlier == raw_key else f"{earlier!r} and {raw_key!r} both give {key}"
            raise UsageError(f"{origin}: {twice}; give it once")
        spellings[key] = raw_key
        yield raw_key, key, value


def _convert_toml(value: Any, param: Param, raw_key: str, origin: str):
    """Check a TOML value's type against the option's, then convert it like the flag's text."""
    if _means_none(value, param):
        return None
    form = _toml_form(param)
    kind = _toml_kind(value)
    if kind not in form.kinds and not (kind == "string" and value in form.words):
        expected = form.expected + (' or "none"' if param.default is None else "")
        raise UsageError(f"{origin}: {raw_key!r} must be {expected}, got {_described(value)}")
    return _convert(value, param, raw_key, origin)


def _means_none(value: Any, param: Param) -> bool:
    return param.default is None and isinstance(value, str) and value.lower() in NONE_WORDS


def _convert(value: Any, param: Param, raw_key: str, origin: str):
    """Convert with the option's click type, then refuse what the type lets through (NaN, ±inf, huge integers)."""
    try:
        converted = _click_type(param).convert(value, None, None)
    except click.BadParameter as error:
        raise UsageError(f"{origin}: invalid value for {raw_key!r}: {error.message}") from None
    problem = param.problem_with(converted)
    if problem:
        raise UsageError(f"{origin}: invalid value for {raw_key!r}: {problem}")
    return converted


def _click_type(param: Param) -> click.ParamType:
    return click.BOOL if param.type is bool else click.types.convert_type(param.type)


def _toml_form(param: Param) -> TomlForm:
    """The TOML values an option takes: its type's declared form, else the one its click type implies."""
    kind = _click_type(param)
    declared = getattr(kind, "toml_form", None)
    if declared is not None:
        return declared
    if isinstance(kind, click.types.BoolParamType):
        return BOOLEAN_FORM
    if isinstance(kind, click.types.IntParamType):
        return INTEGER_FORM
    if isinstance(kind, click.types.FloatParamType):
        return NUMBER_FORM
    if isinstance(kind, click.Choice):
        return STRING_FORM._replace(expected="one of " + ", ".join(json.dumps(str(c)) for c in kind.choices))
    return STRING_FORM  # text, and any type that parses text: the recipe gives that text


def _toml_kind(value: Any) -> str:
    """The TOML type of a value tomllib returned."""
    kinds = ((bool, "boolean"), (int, "integer"), (float, "float"), (str, "string"), (list, "list"),
             (dict, "table"), (datetime.datetime, "date-time"), (datetime.date, "date"), (datetime.time, "time"))
    return next(name for python_type, name in kinds if isinstance(value, python_type))


def _described(value: Any) -> str:
    """`a float (2.7)`: a TOML value's type and, unless it is a list or table, the value in TOML syntax."""
    kind = _toml_kind(value)
    article = "an" if kind[0] in "aeiou" else "a"
    if kind in ("list", "table"):
        return f"{article} {kind}"
    if kind == "boolean":
        shown = "true" if value else "false"
    elif kind == "string":
        shown = json.dumps(value, ensure_ascii=False)
    elif kind in ("date-time", "date", "time"):
        shown = value.isoformat()
    else:
        shown = str(value)
    return f"{article} {kind} ({shown})"
