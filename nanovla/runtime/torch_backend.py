"""The PyTorch backend: a checkpoint directory run eagerly (CPU or CUDA)."""

from __future__ import annotations

import numpy as np
import torch

from ..checkpoint import CheckpointError, load_checkpoint
from ..engine import Engine, ImageContext
from ..preprocess import preprocess
from .base import Runtime, RuntimeError_
from .sampling import SamplingConfig


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

    def decode(self, ids):
        return self.tokenizer.decode(ids)

    def close(self) -> None:
        self.model = None
        self.engine = None
