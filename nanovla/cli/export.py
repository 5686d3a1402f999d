"""`nanovla export MODEL --to FORMAT [--out DIR] ...`; flags come from the format table and
the ExportOptions dataclass (one source for validation and --help)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys

from .common import add_dataclass_args, dataclass_from_args, given_fields
from ..export.formats import FORMATS, ExportOptions, formats_help, option_help


def add_export_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "export", help="export a checkpoint to a bundle (ONNX fp32/int8/fp16, TensorRT)",
        description="Export a checkpoint to a bundle directory: vision, prefill and decode graphs, the tokenizer "
                    "and bundle.json (I/O, preprocessing, precision, parity measured against PyTorch).",
        epilog=formats_help(), formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", nargs="?", default=None, help="checkpoint directory (default: the shipped model)")
    p.add_argument("--to", required=True, choices=list(FORMATS), help="export format (see below)")
    p.add_argument("--out", default=None, help="bundle directory to write (default: bundles/<model>-<format>)")
    descriptions = option_help()
    add_dataclass_args(p, ExportOptions, switches=True, describe=lambda f: _field_help(f, descriptions.get(f.name, "")))
    p.add_argument("--json", action="store_true", help="print bundle.json's parity section as JSON")
    p.set_defaults(func=cmd_export)
    return p


def _field_help(field: dataclasses.Field, description: str) -> str:
    formats = [f.name for f in FORMATS.values() if field.name in f.options]
    where = f" [{', '.join(formats)} only]" if formats else ""
    return f"{description} (default {field.default!r}){where}"


def cmd_export(args) -> int:
    from ..runtime.base import resolve_model

    fmt = FORMATS[args.to]
    given = given_fields(ExportOptions, args)
    options = dataclass_from_args(ExportOptions, args)
    options.validate(fmt, given)  # ValueError -> one line, exit 2 (cli.main)
    model = resolve_model(args.model)
    out = args.out or os.path.join("bundles", f"{os.path.basename(os.path.normpath(model))}-{fmt.name}")
    if os.path.abspath(out) == os.path.abspath(model):
        raise ValueError("--out must differ from the model directory")
    try:
        from ..export.exporter import export_bundle
    except ImportError as e:
        raise ValueError(f"export needs PyTorch, onnx and onnxruntime (pip install 'nanovla[export]'): {e}") from None
    data = export_bundle(model, fmt.name, out, options, log=lambda m: print(m, file=sys.stderr, flush=True))
    if args.json:
        print(json.dumps({"bundle": out, "precision": data["precision"], "parity": data["parity"]}, indent=2))
    else:
        print(out)
    return 0
