"""The `nanovla` command line (`nanovla = "nanovla.cli:main"`): main.py builds the argparse tree and
imports, for the command given, only the module that runs it (so `describe` never imports torch)."""

from .main import build_parser, main

__all__ = ["build_parser", "main"]
