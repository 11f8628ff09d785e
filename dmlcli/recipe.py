"""Recipes and --set: TOML files and KEY=VALUE pairs that give options by name.

Precedence, low to high: defaults, the recipe, --set, explicit command-line flags.
Values are checked with the same click types as the flags, so a bad value reads the same
wherever it came from; an unknown key is an error that names it.
"""

from __future__ import annotations

import click
import tomllib

from dmlcli.algorithms.base import Param
from dmlcli.errors import UsageError

NONE_WORDS = ("none", "null", "")


def load_recipe(path: str) -> dict:
    try:
        with open(path, "rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise UsageError(f"recipe not found: {path}") from None
    except tomllib.TOMLDecodeError as error:
        raise UsageError(f"recipe {path} is not valid TOML: {error}") from None


def parse_set(pairs: tuple[str, ...]) -> dict:
    values = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--set expects KEY=VALUE, got {pair!r}")
        values[key.strip()] = value.strip()
    return values


def convert(values: dict, params: dict[str, Param], origin: str) -> dict:
    """Check each key against the known parameters and convert its value with that parameter's type."""
    converted = {}
    for raw_key, value in values.items():
        key = raw_key.replace("-", "_")
        if key not in params:
            raise UsageError(f"{origin}: unknown key {raw_key!r}")
        param = params[key]
        if isinstance(value, str) and value.lower() in NONE_WORDS and param.default is None:
            converted[key] = None
            continue
        kind = click.BOOL if param.type is bool else click.types.convert_type(param.type)
        try:
            converted[key] = kind.convert(value, None, None)
        except click.BadParameter as error:
            raise UsageError(f"{origin}: invalid value for {raw_key!r}: {error.message}") from None
    return converted
