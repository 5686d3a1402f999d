"""The one sampler: the next token from logits, greedy or sampled (temperature, top-k, top-p).

numpy only (no torch: a bundle runs without it). Every backend draws its tokens here (the torch
Engine hands its logits over as numpy), and so may a training stage that samples batches:
`sample` takes the logits of one sequence, (V,) -> int, or of a batch, (B, V) -> B ids, with
the same rule for every row.

The rule, in order: temperature 0 is argmax (no random number drawn); otherwise the logits are
divided by the temperature; top-k keeps the k largest (ties with the k-th kept); top-p keeps,
of what is left, the smallest set of most probable tokens whose probability reaches top_p;
the kept probabilities are renormalised and one token is drawn by inverse CDF, one uniform
number per row from the numpy Generator (seeded from SamplingConfig.seed).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


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


def distribution(logits: np.ndarray, temperature: float, top_k: int = 0, top_p: float = 1.0) -> np.ndarray:
    """The probabilities `sample` draws from, float64 of the logits' shape (..., V); temperature 0
    gives the argmax one-hot."""
    x = np.asarray(logits)
    if temperature == 0:
        probs = np.zeros(x.shape)
        np.put_along_axis(probs, np.argmax(x, axis=-1)[..., None], 1.0, axis=-1)
        return probs
    x = x.astype(np.float64) / temperature
    vocab = x.shape[-1]
    if 0 < top_k < vocab:
        kth = np.partition(x, vocab - top_k, axis=-1)[..., vocab - top_k, None]
        x = np.where(x < kth, -np.inf, x)
    probs = np.exp(x - x.max(axis=-1, keepdims=True))
    probs /= probs.sum(axis=-1, keepdims=True)
    if top_p < 1.0:
        order = np.argsort(-probs, axis=-1, kind="stable")
        ranked = np.take_along_axis(probs, order, axis=-1)
        before = np.cumsum(ranked, axis=-1) - ranked  # mass of the more probable tokens
        ranked = np.where(before >= top_p, 0.0, ranked)  # already reached: not needed
        probs = np.zeros_like(probs)
        np.put_along_axis(probs, order, ranked, axis=-1)
        probs /= probs.sum(axis=-1, keepdims=True)
    return probs


def sample(logits: np.ndarray, temperature: float, top_k: int, top_p: float,
           rng: np.random.Generator) -> int | np.ndarray:
    """logits (V,) -> a token id; (B, V) -> an int64 array of B ids, row b drawn exactly as the
    1-D call on logits[b] would draw it with the same generator state."""
    x = np.asarray(logits)
    if x.ndim not in (1, 2):
        raise ValueError(f"logits must be (V,) or (B, V), got shape {x.shape}")
    if temperature == 0:
        ids = np.argmax(x, axis=-1)
        return int(ids) if x.ndim == 1 else ids.astype(np.int64)
    probs = distribution(x.reshape(-1, x.shape[-1]), temperature, top_k, top_p)
    cdf = np.cumsum(probs, axis=-1)
    u = rng.random(probs.shape[0]) * cdf[:, -1]
    ids = (cdf <= u[:, None]).sum(axis=-1)  # the first token whose cumulative probability exceeds u
    last = probs.shape[-1] - 1 - np.argmax(probs[:, ::-1] > 0, axis=-1)  # rounding never picks a 0-prob tail
    ids = np.minimum(ids, last).astype(np.int64)
    return int(ids[0]) if x.ndim == 1 else ids


class Sampler:
    """A SamplingConfig (validated) and its seeded generator: call it with logits, once per step."""

    def __init__(self, cfg: SamplingConfig):
        cfg.validate()
        self.cfg = cfg
        self.rng = np.random.default_rng(cfg.seed)

    def __call__(self, logits: np.ndarray) -> int | np.ndarray:
        c = self.cfg
        return sample(logits, c.temperature, c.top_k, c.top_p, self.rng)
