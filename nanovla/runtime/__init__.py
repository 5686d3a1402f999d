"""One runtime interface, several backends; callers choose a backend by name.

    from nanovla.runtime import load_runtime
    rt = load_runtime(model=None, backend="auto")    # None = the shipped default (its bundle)
    ctx = rt.encode(rgb_uint8_frame)                 # encode once ...
    rt.generate(ctx, "how many cubes are there?")    # ... ask many times
"""

from .base import BACKEND_CHOICES, BACKENDS, Answer, Runtime, RuntimeError_, choose_backend, load_runtime, resolve_model

__all__ = ["BACKENDS", "BACKEND_CHOICES", "Answer", "Runtime", "RuntimeError_", "choose_backend", "load_runtime",
           "resolve_model"]
