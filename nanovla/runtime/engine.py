"""Generation with a KV cache: greedy or sampled (temperature, top-k, top-p, seed), stop tokens,
max new tokens, and a streaming callback.

An image is encoded once into an `ImageContext`: its image tokens *and* the decoder's KV cache of
the shared prefix `<|bos|><|user_start|><|image|>*N`. Every question about that image starts
from the cached prefix, so only the question's own tokens are prefilled.

Tokens are drawn by the runtime's one sampler (nanovla.runtime.sampling, numpy), as on every
backend; `SamplingConfig` and `StreamCallback` live in the runtime and are importable from here.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch

from ..model.decoder import KVCache
from .base import StreamCallback, decode_loop
from .sampling import Sampler, SamplingConfig
from ..model.tokenizer import Tokenizer, check_question
from ..model.vlm import VisionLanguageModel


@dataclass
class ImageContext:
    image_tokens: torch.Tensor  # (1, N, C)
    cache: KVCache  # decoder cache of the image prefix
    prefix_len: int
    encode_ms: float = 0.0
    meta: dict = field(default_factory=dict)  # e.g. the ROS header of the frame


class Engine:
    def __init__(self, model: VisionLanguageModel, tokenizer: Tokenizer, device: str = "cpu"):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.device = torch.device(device)
        # any control token ends an answer (an <|image|> in the output would also corrupt the cache)
        self.stop_ids = set(tokenizer.special_ids().values())
        self.max_len = model.cfg.decoder.max_seq_len

    @torch.inference_mode()
    def encode(self, pixels: np.ndarray | torch.Tensor) -> ImageContext:
        """pixels (1, 3, H, W) float 0..1 (from nanovla.runtime.preprocess.preprocess) -> ImageContext."""
        t0 = time.perf_counter()
        x = torch.as_tensor(pixels, device=self.device)
        image_tokens = self.model.encode_image(x)
        prefix = self.tokenizer.image_prefix(self.model.image_tokens)
        ids = torch.tensor([prefix], device=self.device)
        _, cache = self.model.prefill(ids, image_tokens)
        return ImageContext(image_tokens, cache, len(prefix), (time.perf_counter() - t0) * 1000)

    @torch.inference_mode()
    def generate_ids(self, context: ImageContext | None, prompt_ids: list[int], sampling: SamplingConfig,
                     on_token: StreamCallback | None = None) -> list[int]:
        """Continue from the context's cached prefix (or from nothing) with prompt_ids."""
        sampler = Sampler(sampling)  # validates
        if context is None:
            cache, start = None, 0
        else:
            cache, start = context.cache, context.prefix_len  # never mutated: cat() makes new tensors
        if start + len(prompt_ids) + 1 > self.max_len:
            raise ValueError(f"prompt of {len(prompt_ids)} tokens does not fit the context of {self.max_len}")
        ids = torch.tensor([prompt_ids], device=self.device)
        logits, cache = self.model.prefill(ids, None, past=cache, start_pos=start)
        pos = start + len(prompt_ids)
        state = {"cache": cache}

        def step(token: int, i: int) -> torch.Tensor:
            logits, state["cache"] = self.model.prefill(torch.tensor([[token]], device=self.device), None,
                                                        past=state["cache"], start_pos=pos + i)
            return logits

        return decode_loop(logits, step, lambda lg: sampler(lg[0].float().cpu().numpy()), self.stop_ids,
                           min(sampling.max_new_tokens, self.max_len - pos), on_token, self.tokenizer.decode)

    def ask(self, context: ImageContext, question: str, sampling: SamplingConfig | None = None,
            on_token: StreamCallback | None = None) -> str:
        question = check_question(question)
        ids = self.generate_ids(context, self.tokenizer.question_suffix(question), sampling or SamplingConfig(),
                                on_token)
        return self.tokenizer.decode(ids).strip()

    @torch.inference_mode()
    def generate_uncached(self, context: ImageContext, question: str, max_new_tokens: int) -> list[int]:
        """Greedy decoding that re-runs the whole sequence every step (the reference for tests)."""
        prefix = self.tokenizer.image_prefix(self.model.image_tokens)
        seq = prefix + self.tokenizer.question_suffix(question)
        out: list[int] = []
        for _ in range(max_new_tokens):
            ids = torch.tensor([seq + out], device=self.device)
            logits, _ = self.model.prefill(ids, context.image_tokens)
            token = int(torch.argmax(logits[0]))
            if token in self.stop_ids:
                break
            out.append(token)
        return out
