"""The backend-neutral runtime interface (no torch import here: a bundle runs without it)."""

from __future__ import annotations

import importlib
import os
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from ..model.paths import default_bundle_dir, default_model_dir
from ..model.tokenizer import check_question
from .bundle import is_bundle
from .preprocess import check_rgb
from .prompts import DESCRIBE_PROMPT

# backend name -> "module:Class"; imported only when chosen, so torch stays optional
BACKENDS: dict[str, str] = {
    "torch": "nanovla.runtime.torch_backend:TorchRuntime",
    "onnxruntime": "nanovla.runtime.ort_backend:OnnxRuntime",
    "tensorrt": "nanovla.runtime.trt_backend:TensorRTRuntime",
}

# what --backend / the `backend` parameter accept: a backend, or "auto" (see choose_backend)
BACKEND_CHOICES: tuple[str, ...] = ("auto", *BACKENDS)

# on_token(token_id, text_so_far) -> False to stop generating (streaming / cancellation)
StreamCallback = Callable[[int, str], "bool | None"]


def decode_loop(logits, step: Callable[[int, int], Any], sample: Callable[[Any], int], stop_ids: set[int],
                budget: int, on_token: StreamCallback | None, decode_text: Callable[[list[int]], str]) -> list[int]:
    """The token loop every backend shares: sample from `logits`, stop on a control token or the
    budget, stream through `on_token` (False stops), then `step(token, i)` -> the next logits, where
    i is the token's index among the generated ones (its position is the prompt's end + i)."""
    out: list[int] = []
    for i in range(budget):
        token = sample(logits)
        if token in stop_ids:
            break
        out.append(token)
        if on_token is not None and on_token(token, decode_text(out)) is False:
            break
        if i + 1 == budget:
            break
        logits = step(token, i)
    return out


def batch_decode_loop(logits, step: Callable[[np.ndarray, int], Any], sample: Callable[[int, Any], int],
                      stop_ids: set[int], budget: int, cancel: Callable[[], bool] | None = None
                      ) -> tuple[list[list[int]], bool]:
    """decode_loop for B sequences that step together: `logits` (B, V); each row stops at its own
    control token, the loop when every row has stopped or at the budget. `sample(row, row_logits)`
    -> token; `step(tokens (B,) int, i)` -> the next (B, V) logits, i as in decode_loop. A stopped
    row is fed its stop token again (its outputs are ignored: every row sits at the same position,
    the graphs' past_length is one number). `cancel()` -> True stops the whole batch (returned
    as the second value)."""
    rows = len(logits)
    out: list[list[int]] = [[] for _ in range(rows)]
    done = [False] * rows
    tokens = np.zeros(rows, dtype=np.int64)
    for i in range(budget):
        for r in range(rows):
            if done[r]:
                continue
            token = sample(r, logits[r])
            tokens[r] = token
            if token in stop_ids:
                done[r] = True
            else:
                out[r].append(token)
        if all(done) or i + 1 == budget:
            break
        if cancel is not None and cancel():
            return out, True
        logits = step(tokens, i)
    return out, False


class RuntimeError_(ValueError):
    """A model/backend that cannot be loaded or used; the message is one line."""


@dataclass
class Answer:
    text: str
    token_ids: list[int]
    latency_ms: float  # this call, end to end (encode included when the call encoded)
    encode_ms: float = 0.0  # vision encode + image-prefix prefill
    first_token_ms: float = 0.0  # from the start of generation to the first token
    stopped: bool = False  # True when on_token asked to stop


# Runtime.batch_decode: how generate_batch runs the decoder for several frames
BATCH_DECODE_CHOICES: tuple[str, ...] = ("auto", "always", "never")


class Runtime(ABC):
    backend: str = ""
    model_path: str = ""
    image_height: int = 0
    image_width: int = 0
    # "auto": decode several frames' rows together where each row's result does not depend on the
    # other rows (float graphs, torch); "always": also where it does (an int8 bundle's decoder
    # quantizes its activations per call, over all rows: faster, but a frame's greedy answer can
    # then differ from its one-by-one answer); "never": one frame at a time (vision still batched)
    batch_decode: str = "auto"

    @abstractmethod
    def encode(self, image: np.ndarray) -> Any:
        """RGB uint8 (H, W, 3) frame -> an image context (kept and reused across questions)."""

    @abstractmethod
    def _generate(self, context: Any, question: str, max_new_tokens: int, temperature: float, top_k: int,
                  top_p: float, seed: int | None, on_token: StreamCallback | None) -> list[int]:
        """Token ids of the answer (stop token excluded)."""

    @abstractmethod
    def decode(self, ids: list[int]) -> str:
        ...

    def describe_params(self) -> dict:
        return {"backend": self.backend, "model": self.model_path}

    def generate(self, context: Any, question: str, *, max_new_tokens: int = 64, temperature: float = 0.0,
                 top_k: int = 0, top_p: float = 1.0, seed: int | None = None,
                 on_token: StreamCallback | None = None) -> Answer:
        question = check_question(question)
        t0 = time.perf_counter()
        first: list[float] = []
        stopped = [False]

        def hook(token: int, text: str):
            if not first:
                first.append((time.perf_counter() - t0) * 1000)
            if on_token is not None and on_token(token, text) is False:
                stopped[0] = True
                return False
            return None

        ids = self._generate(context, question, max_new_tokens, temperature, top_k, top_p, seed, hook)
        latency = (time.perf_counter() - t0) * 1000
        return Answer(self.decode(ids).strip(), ids, latency, 0.0, first[0] if first else latency, stopped[0])

    def ask(self, image: np.ndarray, question: str, **kwargs) -> Answer:
        t0 = time.perf_counter()
        context = self.encode(check_rgb(image))
        answer = self.generate(context, question, **kwargs)
        answer.encode_ms = getattr(context, "encode_ms", 0.0)
        answer.latency_ms = (time.perf_counter() - t0) * 1000
        return answer

    def describe(self, image: np.ndarray, **kwargs) -> Answer:
        return self.ask(image, DESCRIBE_PROMPT, **kwargs)

    # ------------------------------------------------------------------ several frames in one pass
    # The defaults below loop over the frames; a backend whose graphs take a batch overrides them
    # (onnxruntime, torch: one vision call and one decoder pass per step for all frames).

    def encode_batch(self, images: list[np.ndarray]) -> list[Any]:
        """Several RGB frames -> their image contexts (each usable with generate, like encode's)."""
        return [self.encode(check_rgb(image)) for image in images]

    def generate_batch(self, contexts: list[Any], question: str, *, max_new_tokens: int = 64,
                       temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0, seed: int | None = None,
                       cancel: Callable[[], bool] | None = None) -> list[Answer]:
        """The same question about each context, one Answer per context, in order. With temperature
        0 (greedy) each answer is the one generate() gives for that context alone; sampled rows draw
        from their own RNG, seeded seed + row. `cancel()` -> True stops every row (stopped=True).
        Timings are the pass's: latency_ms is the whole batch's, first_token_ms its first step's."""
        on_token = None if cancel is None else (lambda *_: False if cancel() else None)
        return [self.generate(context, question, max_new_tokens=max_new_tokens, temperature=temperature,
                              top_k=top_k, top_p=top_p, seed=None if seed is None else seed + row, on_token=on_token)
                for row, context in enumerate(contexts)]

    def ask_batch(self, images: list[np.ndarray], question: str, **kwargs) -> list[Answer]:
        """The same question about several frames (cameras) in one pass: encode_batch then
        generate_batch; each Answer's latency_ms is the whole pass's, encode_ms the pass's encode."""
        if not images:
            return []
        t0 = time.perf_counter()
        contexts = self.encode_batch(images)
        encode_ms = (time.perf_counter() - t0) * 1000
        answers = self.generate_batch(contexts, question, **kwargs)
        latency = (time.perf_counter() - t0) * 1000
        for answer in answers:
            answer.encode_ms, answer.latency_ms = encode_ms, latency
        return answers

    def describe_batch(self, images: list[np.ndarray], **kwargs) -> list[Answer]:
        """describe() of several frames in one pass (see ask_batch)."""
        return self.ask_batch(images, DESCRIBE_PROMPT, **kwargs)

    def close(self) -> None:
        """Free the model (ROS lifecycle cleanup)."""


def resolve_model(model: str | None) -> str:
    path = model or default_model_dir()
    if not os.path.isdir(path):
        raise RuntimeError_(f"{path}: no such model directory (a checkpoint or an exported bundle)")
    return path


def _onnxruntime_imports() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def choose_backend(model: str | None, backend: str = "auto") -> tuple[str, str]:
    """(model directory, backend) to load. A named backend keeps its name; with no model it runs
    the shipped default: the checkpoint for torch, the shipped int8 bundle for the others.

    "auto": a bundle directory runs with onnxruntime; a checkpoint directory with torch; no model
    runs the shipped bundle with onnxruntime where the bundle is shipped and onnxruntime imports,
    else the shipped checkpoint with torch. (A checkpoint's bundle is never looked for beside it:
    which weights run is what --model names.)"""
    if backend not in BACKEND_CHOICES:
        raise RuntimeError_(f"unknown backend {backend!r}; choose one of {', '.join(BACKEND_CHOICES)}")
    shipped_bundle = default_bundle_dir() if is_bundle(default_bundle_dir()) else None
    if model is None:
        if backend == "auto":
            backend = "onnxruntime" if shipped_bundle and _onnxruntime_imports() else "torch"
        model = shipped_bundle if backend != "torch" and shipped_bundle else default_model_dir()
    path = resolve_model(model)
    if backend == "auto":
        backend = "onnxruntime" if is_bundle(path) else "torch"
    return path, backend


def load_runtime(model: str | None = None, backend: str = "auto", device: str = "cpu", threads: int | None = None,
                 **options) -> Runtime:
    """Load a checkpoint or bundle directory with the named backend ("auto": see choose_backend)."""
    path, backend = choose_backend(model, backend)
    module_name, cls_name = BACKENDS[backend].split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        hint = (" (pip install 'nanovla[torch]', or run an exported bundle: `nanovla export` it and pass the "
                "bundle directory)" if backend == "torch" else "")
        raise RuntimeError_(f"backend {backend!r} is not available here: {e}{hint}") from None
    return getattr(module, cls_name)(path, device=device, threads=threads, **options)
