"""What every `nanovla` command module shares: the one-line user error and loading a runtime from
the parsed arguments. A leaf: cli.py and cli_hf.py import it, it imports neither of them."""

from __future__ import annotations


class CLIError(Exception):
    """A user-facing error: printed as one line."""


def load_runtime_from_args(args):
    """The runtime named by --model/--backend/--device/--threads; a bad one is a CLIError."""
    from .runtime import RuntimeError_, load_runtime

    try:
        return load_runtime(args.model, backend=args.backend, device=args.device, threads=args.threads or None)
    except RuntimeError_ as e:
        raise CLIError(str(e)) from None
