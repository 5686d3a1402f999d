"""One runtime interface, several backends; callers choose a backend by name.

    from nanovla.runtime import load_runtime
    rt = load_runtime(model=None, backend="torch")   # None = the shipped default model
    ctx = rt.encode(rgb_uint8_frame)                 # encode once ...
    rt.generate(ctx, "how many cubes are there?")    # ... ask many times
"""

from .base import BACKENDS, Answer, Runtime, RuntimeError_, load_runtime, resolve_model

__all__ = ["BACKENDS", "Answer", "Runtime", "RuntimeError_", "load_runtime", "resolve_model"]
