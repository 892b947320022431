"""Shared CLI plumbing: dataclass fields become flags, config files become dicts."""

from __future__ import annotations

import argparse
import dataclasses
import json
import types
import typing
from pathlib import Path
from typing import Any

from saekit.errors import SaekitError


def _base_type(annotation: Any) -> Any:
    if isinstance(annotation, str):
        annotation = eval(annotation, {"typing": typing}, {})  # annotations are our own source text
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _base_type(args[0])
    return annotation


def add_dataclass_arguments(parser: argparse.ArgumentParser, cls: type, exclude: tuple[str, ...] = (),
                            group_title: str | None = None) -> None:
    """One `--field-name` flag per dataclass field, with the field's help text. Flags default to None
    (meaning "not given"), so values from a config file are overridden only by flags actually passed."""
    target = parser.add_argument_group(group_title) if group_title else parser
    for f in dataclasses.fields(cls):
        if f.name in exclude:
            continue
        flag = "--" + f.name.replace("_", "-")
        help_text = f.metadata.get("help", "")
        default = f.default if f.default is not dataclasses.MISSING else None
        if default is not None:
            help_text += f" (default: {default})"
        base = _base_type(f.type)
        origin = typing.get_origin(base)
        if base is bool:
            target.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None,
                                help=help_text)
        elif origin in (list, tuple):
            item = typing.get_args(base)[0]
            target.add_argument(flag, dest=f.name, nargs="+", type=item, default=None, help=help_text)
        else:
            target.add_argument(flag, dest=f.name, type=base, default=None, help=help_text)


def dataclass_values(args: argparse.Namespace, cls: type) -> dict[str, Any]:
    """The flags of `cls` that the user actually passed."""
    names = {f.name for f in dataclasses.fields(cls)}
    return {name: value for name, value in vars(args).items() if name in names and value is not None}


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a TOML, YAML or JSON config file into a dict, with one-line errors."""
    from saekit.io import read_text

    path = Path(path)
    text = read_text(path, "config file")
    suffix = path.suffix.lower()
    try:
        if suffix == ".toml":
            try:
                import tomllib
            except ModuleNotFoundError:  # Python 3.10
                import tomli as tomllib  # type: ignore[no-redef]
            data = tomllib.loads(text)
        elif suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        elif suffix == ".json":
            data = json.loads(text)
        else:
            raise SaekitError(f"config file {path} must end in .toml, .yaml, .yml or .json")
    except SaekitError:
        raise
    except Exception as error:  # parser errors differ per library; all mean the same to a user
        raise SaekitError(f"cannot parse {path}: {str(error).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise SaekitError(f"config file {path} must hold a table/mapping at the top level")
    return data


def build(cls: type, values: dict[str, Any], what: str) -> Any:
    """Instantiate a config dataclass, turning unknown keys and type errors into one-line errors."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise SaekitError(f"unknown {what} option(s): {', '.join(unknown)}")
    try:
        return cls(**values)
    except TypeError as error:
        raise SaekitError(f"bad {what} options: {error}") from None


def read_prompts(path: Path) -> list[str]:
    """The non-empty lines of a prompt file, one prompt each."""
    from saekit.io import read_text

    if not path.is_file():
        raise SaekitError(f"prompt file not found: {path}")
    prompts = [line.strip() for line in read_text(path, "prompt file").splitlines() if line.strip()]
    if not prompts:
        raise SaekitError(f"{path} holds no prompts")
    return prompts


def print_table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    """Print a plain aligned text table and return it."""
    from saekit.inspect.tables import format_table

    table = format_table(rows, columns)
    print(table)
    return table
