"""The one dataclass-to-argparse helper (nanovla.cli.common), used by `nanovla train` (TrainConfig)
and `nanovla export` (ExportOptions)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import pytest

from nanovla.cli.common import CLIError, add_dataclass_args, dataclass_from_args, given_fields


@dataclass
class Options:
    steps: int = 10
    lr: float = 1e-3
    name: str = "run"
    compile: bool = False
    sizes: tuple[int, ...] = (1, 2)  # no flag: not a scalar


def parser(**kwargs) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser()
    add_dataclass_args(p, Options, **kwargs)
    return p


def test_flags_are_typed_and_only_given_ones_override():
    args = parser().parse_args(["--steps", "5", "--compile", "yes"])
    assert given_fields(Options, args) == {"steps", "compile"}
    assert dataclass_from_args(Options, args, {"name": "base"}) == Options(steps=5, name="base", compile=True)
    assert dataclass_from_args(Options, parser().parse_args([])) == Options()
    assert "--sizes" not in parser().format_help()
    with pytest.raises(SystemExit):
        parser().parse_args(["--compile", "maybe"])
    with pytest.raises(SystemExit):
        parser().parse_args(["--steps", "many"])


def test_switches_and_help():
    p = parser(switches=True, describe=lambda f: f"about {f.name}")
    assert dataclass_from_args(Options, p.parse_args(["--compile", "--lr", "0.5"])) == Options(lr=0.5, compile=True)
    assert "about lr" in p.format_help()
    assert "(default 10)" in parser().format_help() and "(default false)" in parser().format_help()


def test_unknown_base_keys_are_a_cli_error():
    with pytest.raises(CLIError, match="unknown Options keys: bogus"):
        dataclass_from_args(Options, parser().parse_args([]), {"bogus": 1})


def test_train_and_export_flags_come_from_the_helper():
    import dataclasses

    import importlib

    from nanovla.cli import build_parser, common
    from nanovla.export.formats import ExportOptions
    from nanovla.training.config import TrainConfig

    cli_main = importlib.import_module("nanovla.cli.main")  # the module (nanovla.cli.main is also main())
    assert cli_main.add_dataclass_args is common.add_dataclass_args  # one helper builds train and export flags
    p = build_parser()
    args = p.parse_args(["export", "ckpt", "--to", "onnx", "--allow-drift", "--parity-scenes", "3"])
    assert given_fields(ExportOptions, args) == {"allow_drift", "parity_scenes"}
    assert dataclass_from_args(ExportOptions, args) == ExportOptions(allow_drift=True, parity_scenes=3)
    scalar = [f.name for f in dataclasses.fields(TrainConfig) if f.type in ("int", "float", "str", "bool")]
    args = p.parse_args(["train", "--stage", "sft"])
    assert scalar and all(hasattr(args, name) for name in scalar)
