"""A training run killed at a chosen step, for the resume tests (in-process and under torchrun)."""

from __future__ import annotations

import contextlib


@contextlib.contextmanager
def killed_at(module, step: int, error: BaseException | None = None):
    """Within the block, the stage `module`'s learning-rate schedule (`module.lr_factor`, called at
    the top of every step) raises `error` (default KeyboardInterrupt) when the loop reaches `step`:
    the run stops there with its resume state written by the saves before it."""
    original = module.lr_factor

    def crash(at: int, cfg):
        if at == step:
            raise error if error is not None else KeyboardInterrupt("killed")
        return original(at, cfg)

    module.lr_factor = crash
    try:
        yield
    finally:
        module.lr_factor = original
