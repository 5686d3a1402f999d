"""Generation with a KV cache: greedy or sampled (temperature, top-k, top-p, seed), stop tokens,
max new tokens, and a streaming callback.

An image is encoded once into an `ImageContext`: its image tokens *and* the decoder's KV cache of
the shared prefix `<|bos|><|user_start|><|image|>*N`. Every question about that image starts
from the cached prefix, so only the question's own tokens are prefilled.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from .gpt import KVCache
from .runtime.base import decode_loop
from .tokenizer import Tokenizer, check_question
from .vlm import VisionLanguageModel

# on_token(token_id, text_so_far) -> False to stop (e.g. a cancelled ROS action)
StreamCallback = Callable[[int, str], "bool | None"]


@dataclass
class SamplingConfig:
    max_new_tokens: int = 64  # hard cap on generated tokens
    temperature: float = 0.0  # 0 = greedy
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1.0 = off
    seed: int | None = None  # sampling seed (None = nondeterministic)

    def validate(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")


@dataclass
class ImageContext:
    image_tokens: torch.Tensor  # (1, N, C)
    cache: KVCache  # decoder cache of the image prefix
    prefix_len: int
    encode_ms: float = 0.0
    meta: dict = field(default_factory=dict)  # e.g. the ROS header of the frame


def sample_next(logits: torch.Tensor, cfg: SamplingConfig, generator: torch.Generator | None) -> int:
    """logits (V,) -> token id."""
    if cfg.temperature == 0:
        return int(torch.argmax(logits))
    logits = logits.float() / cfg.temperature
    if cfg.top_k > 0:
        k = min(cfg.top_k, logits.shape[-1])
        kth = torch.topk(logits, k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    if cfg.top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True)
        cumulative = torch.cumsum(sorted_probs, dim=-1)
        drop = cumulative - sorted_probs > cfg.top_p  # keep the smallest set reaching top_p
        sorted_probs[drop] = 0
        probs = torch.zeros_like(probs).scatter(0, order, sorted_probs)
        probs = probs / probs.sum()
    return int(torch.multinomial(probs, 1, generator=generator))


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
        """pixels (1, 3, H, W) float 0..1 (from nanovla.preprocess.preprocess) -> ImageContext."""
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
        sampling.validate()
        if context is None:
            cache, start = None, 0
        else:
            cache, start = context.cache, context.prefix_len  # never mutated: cat() makes new tensors
        if start + len(prompt_ids) + 1 > self.max_len:
            raise ValueError(f"prompt of {len(prompt_ids)} tokens does not fit the context of {self.max_len}")
        generator = None
        if sampling.seed is not None:
            generator = torch.Generator(device="cpu").manual_seed(sampling.seed)
        ids = torch.tensor([prompt_ids], device=self.device)
        logits, cache = self.model.prefill(ids, None, past=cache, start_pos=start)
        pos = start + len(prompt_ids)
        state = {"cache": cache}

        def step(token: int, i: int) -> torch.Tensor:
            logits, state["cache"] = self.model.prefill(torch.tensor([[token]], device=self.device), None,
                                                        past=state["cache"], start_pos=pos + i)
            return logits

        return decode_loop(logits, step, lambda lg: sample_next(lg[0].cpu(), sampling, generator), self.stop_ids,
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
