"""`nanovla export MODEL --to FORMAT [--out DIR] ...` (the [export] extra: PyTorch, onnx); its flags
come from the format table and the ExportOptions dataclass (built in main.py, torch-free)."""

from __future__ import annotations

import json
import os

from ..export.exporter import export_bundle
from ..export.formats import FORMATS, ExportOptions
from ..runtime.base import resolve_model
from .common import dataclass_from_args, given_fields, log


def cmd_export(args) -> int:
    fmt = FORMATS[args.to]
    given = given_fields(ExportOptions, args)
    options = dataclass_from_args(ExportOptions, args)
    options.validate(fmt, given)  # ValueError -> one line, exit 2 (cli.main)
    model = resolve_model(args.model)
    out = args.out or os.path.join("bundles", f"{os.path.basename(os.path.normpath(model))}-{fmt.name}")
    if os.path.abspath(out) == os.path.abspath(model):
        raise ValueError("--out must differ from the model directory")
    data = export_bundle(model, fmt.name, out, options, log=log)
    if args.json:
        print(json.dumps({"bundle": out, "precision": data["precision"], "parity": data["parity"]}, indent=2))
    else:
        print(out)
    return 0
