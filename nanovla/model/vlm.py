"""The vision-language model: vision encoder -> projector -> image tokens placed at the
<|image|> positions of the decoder's input. RoPE positions run on across image and text."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import ModelConfig, VisionConfig
from .decoder import GPT, KVCache
from .vision_hf import HFVisionEncoder
from .projector import Projector
from .vision import VisionEncoder, YoloNeckEncoder


def build_vision_encoder(cfg: VisionConfig) -> VisionEncoder:
    """The encoder the config names, behind the one VisionEncoder interface (a CLIP/SigLIP tower
    needs `transformers`, imported when one is built)."""
    if cfg.kind == "yolov9":
        return YoloNeckEncoder(cfg)
    if cfg.kind in ("clip", "siglip"):
        return HFVisionEncoder(cfg)
    raise ValueError(f"unknown vision encoder kind {cfg.kind!r}; expected yolov9, clip or siglip")


class VisionLanguageModel(nn.Module):
    def __init__(self, cfg: ModelConfig, image_token_id: int):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.image_token_id = image_token_id
        self.vision = build_vision_encoder(cfg.vision)
        v = cfg.vision
        self.feature_sizes = [(v.image_height // s, v.image_width // s) for s in self.vision.strides]
        self.projector = Projector(cfg.projector, self.vision.channels, self.feature_sizes, cfg.decoder.n_embd)
        self.decoder = GPT(cfg.decoder)
        self.register_buffer("pixel_mean", torch.tensor(v.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(v.std).view(1, 3, 1, 1), persistent=False)

    @property
    def image_tokens(self) -> int:
        return self.cfg.image_tokens

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) float in 0..1 -> (B, image_tokens, n_embd)."""
        return self.projector(self.neck_features(pixels))

    def neck_features(self, pixels: torch.Tensor) -> list[torch.Tensor]:
        """(B, 3, H, W) float in 0..1 -> the vision encoder's feature grids (`feature_sizes`)."""
        return self.vision((pixels - self.pixel_mean) / self.pixel_std)

    def embed(self, ids: torch.Tensor, image_embeds: torch.Tensor | None) -> torch.Tensor:
        """Token embeddings with image tokens written, in order, over the <|image|> positions."""
        x = self.decoder.embed_tokens(ids)
        if image_embeds is not None:
            is_image = (ids == self.image_token_id).unsqueeze(-1)
            x = x.masked_scatter(is_image, image_embeds.to(x.dtype))
        return x

    @torch.no_grad()
    def pooled_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, image_tokens, C): the frozen encoder's grid-pooled features, what
        `forward(pooled=...)` takes instead of pixels (a grid resampler only)."""
        return self.projector.resampler.pool(self.neck_features(pixels))

    def forward(
        self,
        ids: torch.Tensor,  # (B, T)
        loss_mask: torch.Tensor,  # (B, T), 1 on supervised (assistant) tokens
        pixels: torch.Tensor | None = None,  # (B, 3, H, W) for rows that carry an image
        pooled: torch.Tensor | None = None,  # or their `pooled_features`, computed once (frozen encoder)
    ) -> torch.Tensor:
        """Mean next-token cross-entropy over assistant tokens only."""
        logits, targets = self.supervised_logits(ids, loss_mask, pixels, pooled)
        return F.cross_entropy(logits.float(), targets)

    def token_logprobs(self, ids: torch.Tensor, loss_mask: torch.Tensor, pixels: torch.Tensor | None = None,
                       pooled: torch.Tensor | None = None) -> torch.Tensor:
        """log p of every supervised token, (N,) in row-major order (the RL stage's policy ratio)."""
        logits, targets = self.supervised_logits(ids, loss_mask, pixels, pooled)
        return torch.log_softmax(logits.float(), dim=-1).gather(1, targets[:, None]).squeeze(1)

    def supervised_logits(self, ids: torch.Tensor, loss_mask: torch.Tensor, pixels: torch.Tensor | None,
                          pooled: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits predicting each supervised token (N, V), those tokens (N,)), row-major."""
        if pooled is not None:
            image_embeds = self.projector.from_pooled(pooled)
        else:
            image_embeds = self.encode_image(pixels) if pixels is not None else None
        if image_embeds is not None:
            n_placeholders = int((ids == self.image_token_id).sum())
            if n_placeholders != image_embeds.shape[0] * image_embeds.shape[1]:
                raise ValueError(f"{n_placeholders} <|image|> placeholders for "
                                 f"{image_embeds.shape[0]}x{image_embeds.shape[1]} image tokens")
        x = self.embed(ids, image_embeds)
        # predict token t+1 from position t; only positions whose target is supervised
        targets = ids[:, 1:]
        supervised = loss_mask[:, 1:].bool()
        flat = torch.nonzero(F.pad(supervised, (0, 1)).reshape(-1)).squeeze(1)
        logits, _ = self.decoder(x, hidden_positions=flat)
        return logits, targets[supervised]

    @torch.no_grad()
    def prefill(self, ids: torch.Tensor, image_embeds: torch.Tensor | None, past: KVCache | None = None,
                start_pos: int = 0) -> tuple[torch.Tensor, KVCache]:
        """Run ids (with image tokens) through the decoder; logits of the last position + cache."""
        x = self.embed(ids, image_embeds)
        B, T = ids.shape
        # only the last position's logits are needed: the output head (vocab x width, the largest
        # matmul of a pretrained decoder's prefill) runs on B rows instead of B*T
        last = torch.arange(B, device=ids.device) * T + (T - 1)
        logits, cache = self.decoder(x, past=past, start_pos=start_pos, hidden_positions=last)
        return logits, cache
