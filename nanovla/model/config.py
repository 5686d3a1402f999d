"""Typed configs for each model component. The whole `ModelConfig` is saved as config.json
beside the weights. An older checkpoint's config.json lacks the fields added since it was
written; `ModelConfig.from_dict` gives each missing field its dataclass default, which is what
the model did before the field existed (so a new field's default must keep old behaviour)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


@dataclass
class VisionConfig:
    kind: str = "yolov9"  # yolov9 (ultralytics) | clip | siglip (transformers, local directory)
    arch: str = "yolov9t.yaml"  # ultralytics architecture yaml, or a local .pt whose weights are loaded
    path: str = ""  # clip/siglip: local transformers directory (read when hf_config is empty)
    hf_config: dict = field(default_factory=dict)  # clip/siglip: the vision tower's transformers config,
    # filled by `nanovla init`, so a checkpoint rebuilds the tower without `path` (weights come from it)
    layers: tuple[int, ...] = (15, 18, 21)  # yolov9t neck outputs at strides 8/16/32 (forward hooks)
    strides: tuple[int, ...] = (8, 16, 32)  # stride of each hooked layer
    feature_layer: int = -2  # clip/siglip: hidden state taken (LLaVA uses the penultimate)
    image_height: int = 192  # model input; camera frames are resized to this
    image_width: int = 256
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)  # after /255 (ultralytics feeds 0..1 as is)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)


@dataclass
class ProjectorConfig:
    resampler: str = "grid"  # grid (average-pool every level to one grid) | perceiver (learned queries)
    grid: tuple[int, int] = (6, 8)  # grid resampler: (rows, cols) -> rows*cols image tokens
    num_queries: int = 48  # perceiver resampler: number of image tokens
    width: int = 256  # resampler width (perceiver) / MLP hidden width
    heads: int = 4  # perceiver cross-attention heads
    depth: int = 2  # perceiver cross-attention blocks
    # where each grid token sits: "learned" = a learned per-token vector (zero-init); "sincos" =
    # that plus a fixed 2-D sin/cos code of the token's cell at the scale of the normalised features,
    # so the decoder can read a token's column/row (RoPE over the raster order shows mostly the row)
    positions: str = "learned"
    # the map into the decoder width: "mlp2x_gelu" (Linear-GELU-Linear, LLaVA-1.5) or "linear"
    # (LLaVA-1). A linear map keeps what is linearly separate in the features separate: colour
    # and kind stay two directions, so a (colour, kind) pair never seen in training still reads
    # as its colour plus its kind
    projection: str = "mlp2x_gelu"


@dataclass
class DecoderConfig:
    vocab_size: int = 1024  # set from the tokenizer
    n_layer: int = 6  # transformer blocks
    n_embd: int = 256  # model width
    n_head: int = 4  # query heads
    n_kv_head: int = 2  # key/value heads (GQA): n_head must be a multiple
    mlp_hidden: int = 704  # SwiGLU hidden width (~2.75x n_embd, a multiple of 64)
    max_seq_len: int = 384  # RoPE table length; image tokens count
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    tie_embeddings: bool = True  # output head shares the token embedding
    attention_bias: bool = False  # Qwen2 has q/k/v biases
    # RoPE frequency scaling of long-context checkpoints (Hugging Face `rope_scaling`): {} = none,
    # {"rope_type": "linear", "factor": f} or {"rope_type": "llama3", "factor", "low_freq_factor",
    # "high_freq_factor", "original_max_position_embeddings"}
    rope_scaling: dict = field(default_factory=dict)


@dataclass
class ModelConfig:
    vision: VisionConfig = field(default_factory=VisionConfig)
    projector: ProjectorConfig = field(default_factory=ProjectorConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)

    @property
    def image_tokens(self) -> int:
        p = self.projector
        return p.grid[0] * p.grid[1] if p.resampler == "grid" else p.num_queries

    def validate(self) -> None:
        d, v, p = self.decoder, self.vision, self.projector
        if d.n_embd % d.n_head or d.n_head % d.n_kv_head:
            raise ValueError(f"n_embd={d.n_embd}, n_head={d.n_head}, n_kv_head={d.n_kv_head}: "
                             "n_embd must divide by n_head and n_head by n_kv_head")
        if (d.n_embd // d.n_head) % 2:
            raise ValueError("head dimension must be even for RoPE")
        if p.resampler not in ("grid", "perceiver"):
            raise ValueError(f"unknown resampler {p.resampler!r}; expected grid or perceiver")
        if p.projection not in ("mlp2x_gelu", "linear"):
            raise ValueError(f"unknown projector projection {p.projection!r}; expected mlp2x_gelu or linear")
        if p.positions not in ("learned", "sincos"):
            raise ValueError(f"unknown projector positions {p.positions!r}; expected learned or sincos")
        if p.positions == "sincos" and p.resampler != "grid":
            raise ValueError("projector positions 'sincos' is for the grid resampler (the perceiver's keys carry them already)")
        if v.kind == "yolov9" and p.resampler == "grid":
            for s in v.strides:
                if v.image_height % s or (v.image_height // s) % p.grid[0]:
                    raise ValueError(f"image height {v.image_height} at stride {s} does not pool to {p.grid[0]} rows")
                if v.image_width % s or (v.image_width // s) % p.grid[1]:
                    raise ValueError(f"image width {v.image_width} at stride {s} does not pool to {p.grid[1]} cols")
        if self.image_tokens + 16 > d.max_seq_len:
            raise ValueError(f"max_seq_len={d.max_seq_len} leaves no room after {self.image_tokens} image tokens")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "ModelConfig":
        return cls(
            vision=_build(VisionConfig, data.get("vision", {}), "vision"),
            projector=_build(ProjectorConfig, data.get("projector", {}), "projector"),
            decoder=_build(DecoderConfig, data.get("decoder", {}), "decoder"),
        )


def _build(cls, values: dict, section: str):
    """The section's dataclass from its config.json values: a missing key takes the default, an
    unknown one is an error, JSON lists become the tuples the dataclass declares."""
    names = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise ValueError(f"config section {section!r} has unknown keys: {', '.join(unknown)}")
    kwargs: dict[str, Any] = {}
    for k, v in values.items():
        default = getattr(cls(), k)
        kwargs[k] = tuple(v) if isinstance(default, tuple) and isinstance(v, list) else v
    return cls(**kwargs)
