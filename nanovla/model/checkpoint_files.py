"""A checkpoint directory on disk, without PyTorch: its file names, format tag and error, reading
its config.json and metrics.json, and writing any directory atomically.

`nanovla info` and a bundle-only robot use these; nanovla.model.checkpoint loads and saves the weights.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile

CHECKPOINT_FILES = ("config.json", "model.safetensors", "tokenizer.json")
FORMAT = "nanovla-checkpoint/1"


class CheckpointError(ValueError):
    """A directory that is not a usable checkpoint; the message says why in one line."""


def is_checkpoint(path: str) -> bool:
    return os.path.isdir(path) and all(os.path.isfile(os.path.join(path, f)) for f in CHECKPOINT_FILES)


def atomic_directory_write(final: str, write) -> None:
    """Call write(tmpdir) then move tmpdir to `final` (replacing an existing one)."""
    parent = os.path.dirname(os.path.abspath(final)) or "."
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".tmp-" + os.path.basename(final) + "-", dir=parent)
    try:
        write(tmp)
        if os.path.isdir(final):
            old = final + ".old"
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def read_config(path: str) -> dict:
    if not os.path.isdir(path):
        raise CheckpointError(f"{path}: not a directory (a checkpoint is a directory with {', '.join(CHECKPOINT_FILES)})")
    missing = [f for f in CHECKPOINT_FILES if not os.path.isfile(os.path.join(path, f))]
    if missing:
        raise CheckpointError(f"{path}: not a nanovla checkpoint, missing {', '.join(missing)}")
    try:
        with open(os.path.join(path, "config.json")) as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}/config.json: not valid JSON ({e})") from None
    if data.get("format") != FORMAT:
        raise CheckpointError(f"{path}/config.json: format {data.get('format')!r}, expected {FORMAT!r}")
    return data


def read_metrics(path: str) -> dict:
    try:
        with open(os.path.join(path, "metrics.json")) as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError):
        return {}
