"""A Python start-up shim that makes PyTorch unimportable, for tests that run nanovla as a
bundle-only robot would (`pip install nanovla` brings no torch): put the directory that
`write_torch_blocker` returns first on a subprocess's PYTHONPATH."""

from __future__ import annotations

import os

BLOCKED = ("torch", "torchvision", "torchaudio", "ultralytics")

SITECUSTOMIZE = f'''
"""Written by tests/torch_free_helpers.py: `import torch` (and {", ".join(BLOCKED[1:])}) raise ImportError."""
import sys

BLOCKED = {BLOCKED!r}


class TorchBlocker:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {{name!r}} (blocked: a torch-free test)", name=name)
        return None


sys.meta_path.insert(0, TorchBlocker())
'''


def write_torch_blocker(directory: str) -> str:
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "sitecustomize.py"), "w") as f:
        f.write(SITECUSTOMIZE)
    return directory


def torch_free_env(directory: str, base: dict | None = None) -> dict:
    """`base` (default os.environ) with the blocker first on PYTHONPATH."""
    env = dict(os.environ if base is None else base)
    env["PYTHONPATH"] = os.pathsep.join([write_torch_blocker(directory)]
                                        + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    return env
