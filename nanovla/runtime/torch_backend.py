"""The PyTorch backend: a checkpoint directory run eagerly (CPU or CUDA)."""

from __future__ import annotations

import time

import numpy as np
import torch

from ..model.checkpoint import CheckpointError, load_checkpoint
from .engine import Engine, ImageContext
from .preprocess import check_rgb, preprocess
from ..model.tokenizer import check_question
from .base import Answer, Runtime, RuntimeError_, batch_decode_loop
from .sampling import Sampler, SamplingConfig


class TorchRuntime(Runtime):
    backend = "torch"

    def __init__(self, path: str, device: str = "cpu", threads: int | None = None, dtype: str = "float32"):
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise RuntimeError_(f"device {device!r} requested but CUDA is not available")
        if threads:
            torch.set_num_threads(threads)
        try:
            model, tokenizer, _ = load_checkpoint(path, device=device)
        except CheckpointError as e:
            raise RuntimeError_(str(e)) from None
        if dtype != "float32":
            model.to(getattr(torch, dtype))
        self.model_path = path
        self.model, self.tokenizer = model, tokenizer
        self.engine = Engine(model, tokenizer, device)
        self.image_height = model.cfg.vision.image_height
        self.image_width = model.cfg.vision.image_width
        self.dtype = next(model.parameters()).dtype

    @classmethod
    def from_model(cls, model, tokenizer, device: str = "cpu", path: str = "<in memory>") -> "TorchRuntime":
        """Wrap a model already in memory (training-time evaluation)."""
        self = cls.__new__(cls)
        self.model_path, self.model, self.tokenizer = path, model.eval(), tokenizer
        self.engine = Engine(model, tokenizer, device)
        self.image_height = model.cfg.vision.image_height
        self.image_width = model.cfg.vision.image_width
        self.dtype = next(model.parameters()).dtype
        return self

    def encode(self, image: np.ndarray) -> ImageContext:
        pixels = torch.from_numpy(preprocess(image, self.image_height, self.image_width)).to(self.dtype)
        return self.engine.encode(pixels)

    def _generate(self, context, question, max_new_tokens, temperature, top_k, top_p, seed, on_token):
        sampling = SamplingConfig(max_new_tokens, temperature, top_k, top_p, seed)
        return self.engine.generate_ids(context, self.tokenizer.question_suffix(question), sampling, on_token)

    # ------------------------------------------------------------------ several frames in one pass
    def decodes_rows_together(self, rows: int) -> bool:
        """Rows of a float model are independent (each row's arithmetic is its own), so "auto" batches."""
        return rows >= 2 and self.batch_decode != "never"

    @torch.inference_mode()
    def encode_batch(self, images: list[np.ndarray]) -> list[ImageContext]:
        """One encoder call for all frames, then the image prefix's prefill for all of them together
        (one at a time with batch_decode "never")."""
        if not images:
            return []
        t0 = time.perf_counter()
        pixels = np.concatenate([preprocess(check_rgb(image), self.image_height, self.image_width) for image in images])
        image_tokens = self.model.encode_image(torch.from_numpy(pixels).to(self.dtype).to(self.engine.device))
        prefix = self.tokenizer.image_prefix(self.model.image_tokens)
        rows = len(images)
        if self.decodes_rows_together(rows):
            _, cache = self.model.prefill(torch.tensor([prefix] * rows, device=self.engine.device), image_tokens)
            caches = [[(k[r:r + 1], v[r:r + 1]) for k, v in cache] for r in range(rows)]
        else:
            ids = torch.tensor([prefix], device=self.engine.device)
            caches = [self.model.prefill(ids, image_tokens[r:r + 1])[1] for r in range(rows)]
        encode_ms = (time.perf_counter() - t0) * 1000
        return [ImageContext(image_tokens[r:r + 1], caches[r], len(prefix), encode_ms) for r in range(rows)]

    @torch.inference_mode()
    def generate_batch(self, contexts, question, *, max_new_tokens=64, temperature=0.0, top_k=0, top_p=1.0,
                       seed=None, cancel=None):
        """The contexts' cached prefixes stacked into one batch; the question's prefill and every
        decode step run for all rows together, each row stopping at its own stop token."""
        rows = len(contexts)
        if not self.decodes_rows_together(rows):
            return super().generate_batch(contexts, question, max_new_tokens=max_new_tokens, temperature=temperature,
                                          top_k=top_k, top_p=top_p, seed=seed, cancel=cancel)
        samplers = [Sampler(SamplingConfig(max_new_tokens, temperature, top_k, top_p,  # validates
                                           None if seed is None else seed + r)) for r in range(rows)]
        prompt = self.tokenizer.question_suffix(check_question(question))
        start = contexts[0].prefix_len
        if any(c.prefix_len != start for c in contexts):
            raise ValueError("generate_batch: the contexts' image prefixes differ in length")
        if start + len(prompt) + 1 > self.engine.max_len:
            raise ValueError(f"prompt of {len(prompt)} tokens does not fit the context of {self.engine.max_len}")
        t0 = time.perf_counter()
        device = self.engine.device
        cache = [(torch.cat([c.cache[layer][0] for c in contexts]), torch.cat([c.cache[layer][1] for c in contexts]))
                 for layer in range(len(contexts[0].cache))]
        logits, cache = self.model.prefill(torch.tensor([prompt] * rows, device=device), None, past=cache,
                                           start_pos=start)
        first_ms = (time.perf_counter() - t0) * 1000
        pos = start + len(prompt)
        state = {"cache": cache}

        def step(tokens: np.ndarray, i: int) -> torch.Tensor:
            ids = torch.from_numpy(tokens.copy()).view(rows, 1).to(device)
            out, state["cache"] = self.model.prefill(ids, None, past=state["cache"], start_pos=pos + i)
            return out

        tokens, stopped = batch_decode_loop(logits, step, lambda r, lg: samplers[r](lg.float().cpu().numpy()),
                                            self.engine.stop_ids, min(max_new_tokens, self.engine.max_len - pos), cancel)
        latency = (time.perf_counter() - t0) * 1000
        return [Answer(self.decode(t).strip(), t, latency, 0.0, first_ms, stopped) for t in tokens]

    def decode(self, ids):
        return self.tokenizer.decode(ids)

    def close(self) -> None:
        self.model = None
        self.engine = None
