"""What every `nanovla` command module shares: the one-line user error and output helpers, loading a
runtime from the parsed arguments, and dataclass fields as flags. A leaf of the CLI package: main.py
and every command module import it, it imports none of them (and no torch)."""

from __future__ import annotations

import argparse
import dataclasses
import typing
import json
import sys
from typing import Callable

from ..runtime import RuntimeError_, load_runtime

EXIT_BAD_INPUT = 2


class CLIError(Exception):
    """A user-facing error: printed as one line."""


def emit(obj: dict) -> None:
    """One JSON line on stdout."""
    print(json.dumps(obj), flush=True)


def err(msg: str) -> None:
    """`nanovla: error: MSG` on stderr."""
    print(f"nanovla: error: {msg}", file=sys.stderr, flush=True)


def log(msg: str) -> None:
    """Progress on stderr (stdout carries the results)."""
    print(msg, file=sys.stderr, flush=True)


def load_runtime_from_args(args):
    """The runtime named by --model/--backend/--device/--threads; a bad one is a CLIError."""
    try:
        return load_runtime(args.model, backend=args.backend, device=args.device, threads=args.threads or None)
    except RuntimeError_ as e:
        raise CLIError(str(e)) from None


# ----------------------------------------------------------------------------- dataclass -> argparse

def add_dataclass_args(parser: argparse.ArgumentParser, cls, switches: bool = False,
                       describe: Callable[[dataclasses.Field], str] | None = None) -> None:
    """One --flag per bool/int/float/str field of the dataclass, typed from its annotation, with
    default None (so dataclass_from_args sees what was given; fields of other types get no flag).
    Booleans take true|false, or with `switches` are flags that set True. `describe(field)` gives
    a flag's help (default: its default value)."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        t = hints[f.name]
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        if describe is not None:
            text = describe(f)
        else:
            text = f"(default {str(default).lower()})" if t is bool else f"(default {default!r})"
        if t is bool and switches:
            parser.add_argument(flag, dest=f.name, action="store_const", const=True, default=None, help=text)
        elif t is bool:
            parser.add_argument(flag, dest=f.name, type=_parse_bool, default=None, metavar="true|false", help=text)
        elif t in (int, float, str):
            parser.add_argument(flag, dest=f.name, type=t, default=None, help=text)


def _parse_bool(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def given_fields(cls, args: argparse.Namespace) -> set[str]:
    """The fields of the dataclass whose flags were given (add_dataclass_args' defaults are None)."""
    return {f.name for f in dataclasses.fields(cls) if getattr(args, f.name, None) is not None}


def dataclass_from_args(cls, args: argparse.Namespace, base: dict | None = None):
    """The dataclass from `base` (a dict of field values) overridden by the flags given."""
    values = dict(base or {})
    values.update({name: getattr(args, name) for name in given_fields(cls, args)})
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise CLIError(f"unknown {cls.__name__} keys: {', '.join(unknown)}")
    return cls(**values)
