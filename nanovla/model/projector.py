"""Multi-token projector: a resampler to a fixed number of image tokens, then an MLP into the
decoder width.

- `GridResampler`: every feature level is average-pooled to one (rows, cols) grid and the
  levels are concatenated channel-wise; each grid cell is one image token (raster order).
- `PerceiverResampler`: learned queries cross-attend to the tokens of every level (with 2-D
  sin/cos positions, the same for all levels so a place means one thing across strides).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import ProjectorConfig


def sincos_2d(h: int, w: int, dim: int) -> torch.Tensor:
    """(h*w, dim) 2-D sin/cos embedding of normalised cell centres (resolution-independent)."""
    ys = (torch.arange(h, dtype=torch.float32) + 0.5) / h
    xs = (torch.arange(w, dtype=torch.float32) + 0.5) / w
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    quarter = dim // 4
    freqs = torch.exp(torch.arange(quarter, dtype=torch.float32) * (math.log(100.0) / max(quarter - 1, 1)))
    parts = []
    for g in (gy, gx):
        a = g.reshape(-1, 1) * freqs[None] * math.pi
        parts += [a.sin(), a.cos()]
    emb = torch.cat(parts, dim=1)
    return F.pad(emb, (0, dim - emb.shape[1]))


class GridResampler(nn.Module):
    def __init__(self, cfg: ProjectorConfig, channels: list[int], feature_sizes: list[tuple[int, int]]):
        super().__init__()
        rows, cols = cfg.grid
        self.kernels = []
        for (h, w) in feature_sizes:
            if h % rows or w % cols:
                raise ValueError(f"feature grid {h}x{w} does not pool evenly to {rows}x{cols}")
            self.kernels.append((h // rows, w // cols))
        self.out_dim = sum(channels)
        self.norm = nn.LayerNorm(self.out_dim)
        self.num_tokens = rows * cols

    def pool(self, feats: list[torch.Tensor]) -> torch.Tensor:
        """The parameter-free part: (B, rows*cols, sum C) pooled features, before the LayerNorm."""
        pooled = [F.avg_pool2d(f, k, k) if k != (1, 1) else f for f, k in zip(feats, self.kernels)]
        x = torch.cat(pooled, dim=1)  # (B, sum C, rows, cols)
        return x.flatten(2).transpose(1, 2)  # (B, rows*cols, sum C)

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        return self.norm(self.pool(feats))


class CrossAttentionBlock(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        self.norm_q = nn.LayerNorm(width)
        self.norm_kv = nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.norm_mlp = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))

    def forward(self, q: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
        kvn = self.norm_kv(kv)
        q = q + self.attn(self.norm_q(q), kvn, kvn, need_weights=False)[0]
        return q + self.mlp(self.norm_mlp(q))


class PerceiverResampler(nn.Module):
    def __init__(self, cfg: ProjectorConfig, channels: list[int], feature_sizes: list[tuple[int, int]]):
        super().__init__()
        self.inputs = nn.ModuleList(nn.Linear(c, cfg.width) for c in channels)
        for i, (h, w) in enumerate(feature_sizes):
            self.register_buffer(f"pos{i}", sincos_2d(h, w, cfg.width), persistent=False)
        self.queries = nn.Parameter(torch.randn(cfg.num_queries, cfg.width) * 0.02)
        self.blocks = nn.ModuleList(CrossAttentionBlock(cfg.width, cfg.heads) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(cfg.width)
        self.out_dim = cfg.width
        self.num_tokens = cfg.num_queries

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        tokens = []
        for i, (f, proj) in enumerate(zip(feats, self.inputs)):
            t = f.flatten(2).transpose(1, 2)  # (B, H*W, C)
            tokens.append(proj(t) + getattr(self, f"pos{i}"))
        kv = torch.cat(tokens, dim=1)
        q = self.queries[None].expand(kv.shape[0], -1, -1)
        for block in self.blocks:
            q = block(q, kv)
        return self.norm(q)


class Projector(nn.Module):
    """Resampler + MLP: vision features -> (B, image_tokens, n_embd)."""

    def __init__(self, cfg: ProjectorConfig, channels: list[int], feature_sizes: list[tuple[int, int]], n_embd: int):
        super().__init__()
        if cfg.resampler == "grid":
            self.resampler = GridResampler(cfg, channels, feature_sizes)
        else:
            self.resampler = PerceiverResampler(cfg, channels, feature_sizes)
        n = self.resampler.num_tokens
        self.pos = nn.Parameter(torch.zeros(n, self.resampler.out_dim))  # learned place of each token
        if cfg.positions == "sincos":  # fixed cell code; norm ~0.7x that of a LayerNorm'd token
            self.register_buffer("fixed_pos", sincos_2d(*cfg.grid, self.resampler.out_dim), persistent=False)
        else:
            self.fixed_pos = None
        if cfg.projection == "linear":
            self.mlp = nn.Sequential(nn.Linear(self.resampler.out_dim, n_embd))
        else:
            self.mlp = nn.Sequential(
                nn.Linear(self.resampler.out_dim, cfg.width), nn.GELU(), nn.Linear(cfg.width, n_embd)
            )

    def mlp_inputs(self, feats: list[torch.Tensor]) -> torch.Tensor:
        """The resampled tokens with their position codes: what `mlp` maps into the decoder width."""
        return self._with_positions(self.resampler(feats))

    def _with_positions(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.pos
        if self.fixed_pos is not None:
            x = x + self.fixed_pos
        return x

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        return self.mlp(self.mlp_inputs(feats))

    @property
    def poolable(self) -> bool:
        """True when the resampler's first step has no parameters (grid pooling): a frozen encoder's
        pooled features can then be computed once per image and `from_pooled` trains on them."""
        return isinstance(self.resampler, GridResampler)

    def from_pooled(self, pooled: torch.Tensor) -> torch.Tensor:
        """(B, tokens, C) `GridResampler.pool` output -> image tokens; equal to `forward` on the features."""
        return self.mlp(self._with_positions(self.resampler.norm(pooled)))
