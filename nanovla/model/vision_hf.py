"""CLIP and SigLIP vision towers (transformers) as nanovla vision encoders.

The tower's patch tokens at `feature_layer` (LLaVA takes the penultimate layer, -2) become one
(B, C, H/patch, W/patch) grid; CLIP's class token is dropped. Layers after `feature_layer`, the
post-layernorm and SigLIP's pooling head are never run, so they are removed at build time (and
are absent from nanovla checkpoints).

The tower is built from `VisionConfig.hf_config` when it is set (a nanovla checkpoint: the
weights come from model.safetensors, no directory is needed), otherwise loaded with its
pretrained weights from the local directory `VisionConfig.path` (`nanovla init`). Preprocessing
comes from the checkpoint's preprocessor_config.json (`vision_preprocessing`): mean/std and the
input size; nanovla resizes the whole frame to that size (no centre crop, so nothing at the
frame's edges is cut away), and a size other than the tower's own interpolates its position
embeddings.
"""

from __future__ import annotations

import json
import os

import torch
import torch.nn as nn

from .config import VisionConfig
from .vision import VisionEncoder

KINDS = {"clip": ("CLIPVisionConfig", "CLIPVisionModel"), "siglip": ("SiglipVisionConfig", "SiglipVisionModel")}


def detect_kind(path: str) -> str:
    """clip | siglip from a local directory's config.json (a full CLIP/SigLIP model or its vision tower)."""
    config_path = os.path.join(path, "config.json")
    if not os.path.isfile(config_path):
        raise ValueError(f"{path}: no config.json (expected a local CLIP or SigLIP directory)")
    with open(config_path) as f:
        model_type = json.load(f).get("model_type", "")
    for kind in KINDS:
        if model_type.startswith(kind):
            return kind
    raise ValueError(f"{path}: model_type {model_type!r} is neither CLIP nor SigLIP")


def vision_preprocessing(path: str, hf_config: dict) -> dict:
    """{'mean', 'std', 'image_height', 'image_width'} from preprocessor_config.json (else the tower's
    image_size and the ImageNet-CLIP defaults)."""
    size = hf_config.get("image_size", 224)
    out = {"mean": (0.48145466, 0.4578275, 0.40821073), "std": (0.26862954, 0.26130258, 0.27577711),
           "image_height": size, "image_width": size}
    file = os.path.join(path, "preprocessor_config.json")
    if os.path.isfile(file):
        with open(file) as f:
            pre = json.load(f)
        if "image_mean" in pre:
            out["mean"] = tuple(float(x) for x in pre["image_mean"])
        if "image_std" in pre:
            out["std"] = tuple(float(x) for x in pre["image_std"])
        crop = pre.get("crop_size") if pre.get("do_center_crop") else None
        s = crop or pre.get("size")
        if isinstance(s, dict):
            h = s.get("height") or s.get("shortest_edge")
            w = s.get("width") or s.get("shortest_edge")
            if h and w:
                out["image_height"], out["image_width"] = int(h), int(w)
        elif isinstance(s, int):
            out["image_height"] = out["image_width"] = s
    return out


class HFVisionEncoder(VisionEncoder):
    def __init__(self, cfg: VisionConfig):
        super().__init__()
        try:
            import transformers
        except ImportError:
            raise ImportError("CLIP/SigLIP encoders need transformers: pip install 'nanovla[hf]'") from None
        if cfg.kind not in KINDS:
            raise ValueError(f"HFVisionEncoder handles clip/siglip, not {cfg.kind!r}")
        config_cls, model_cls = (getattr(transformers, n) for n in KINDS[cfg.kind])
        if cfg.hf_config:
            hf_config = config_cls(**cfg.hf_config)
            model = model_cls(hf_config)  # weights follow from the nanovla checkpoint
        else:
            if not os.path.isdir(cfg.path):
                raise FileNotFoundError(f"{cfg.path!r}: no such directory (CLIP/SigLIP load from a local "
                                        "directory; nothing is downloaded)")
            transformers.utils.logging.disable_progress_bar()  # no per-tensor progress bar on stderr
            model = model_cls.from_pretrained(cfg.path, local_files_only=True)
            hf_config = model.config
        tower = getattr(model, "vision_model", model)  # transformers 4 nests the tower, 5 does not
        n_layers = len(tower.encoder.layers)
        # hidden_states[0] is the embedding output, hidden_states[i] the output of layer i
        index = cfg.feature_layer if cfg.feature_layer >= 0 else n_layers + 1 + cfg.feature_layer
        if not 0 <= index <= n_layers:
            raise ValueError(f"feature_layer {cfg.feature_layer} is outside the tower's {n_layers} layers")
        tower.encoder.layers = nn.ModuleList(list(tower.encoder.layers)[:index])
        for unused in ("post_layernorm", "head"):
            if hasattr(tower, unused):
                delattr(tower, unused)
        self.embeddings = tower.embeddings
        self.pre_layernorm = getattr(tower, "pre_layrnorm", None)  # CLIP's (sic) pre-norm
        self.layers = tower.encoder.layers
        self.has_class_token = cfg.kind == "clip"
        self.patch = int(hf_config.patch_size)
        self.native_size = int(hf_config.image_size)
        self.hf_config_dict = {k: v for k, v in hf_config.to_dict().items()
                               if k not in ("transformers_version", "architectures", "_name_or_path", "dtype",
                                            "torch_dtype", "output_hidden_states", "return_dict")}
        if cfg.image_height % self.patch or cfg.image_width % self.patch:
            raise ValueError(f"input {cfg.image_height}x{cfg.image_width} is not a multiple of the patch size {self.patch}")
        self.channels = [int(hf_config.hidden_size)]
        self.strides = [self.patch]

    def forward(self, pixels: torch.Tensor) -> list[torch.Tensor]:
        B, _, H, W = pixels.shape
        interpolate = (H, W) != (self.native_size, self.native_size)
        x = self.embeddings(pixels, interpolate_pos_encoding=interpolate)
        if self.pre_layernorm is not None:
            x = self.pre_layernorm(x)
        for layer in self.layers:
            out = layer(x, None)
            x = out[0] if isinstance(out, tuple) else out
        if self.has_class_token:
            x = x[:, 1:]
        h, w = H // self.patch, W // self.patch
        return [x.transpose(1, 2).reshape(B, -1, h, w)]  # (B, C, H/patch, W/patch)
