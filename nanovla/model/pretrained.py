"""`nanovla init`: a checkpoint assembled from pretrained parts, with an untrained projector.

    encoder: "yolov9t" (fresh ultralytics architecture), a local ultralytics `.pt` (a team's own
             trained detector: its neck features), or a local CLIP / SigLIP directory
    decoder: a local Hugging Face Llama / Qwen2 / SmolLM2 directory (nanovla.model.decoder_hf)

The projector adapts to the encoder: a grid resampler when the requested number of image tokens
tiles the encoder's feature grid, a Perceiver resampler (learned queries) otherwise. Training
stages (align, then sft) start from the written checkpoint.
"""

from __future__ import annotations

import json
import os

import torch

from .checkpoint import save_checkpoint
from .config import ModelConfig, ProjectorConfig, VisionConfig
from .decoder_hf import PROVENANCE_FILE, load_hf_decoder
from .vision_hf import detect_kind, vision_preprocessing
from .vlm import VisionLanguageModel, build_vision_encoder


def pick_grid(tokens: int, sizes: list[tuple[int, int]]) -> tuple[int, int] | None:
    """(rows, cols) with rows*cols == tokens that every feature grid pools to evenly, closest to the
    grids' aspect ratio; None when there is none."""
    h, w = sizes[0]
    best = None
    for rows in range(1, tokens + 1):
        if tokens % rows:
            continue
        cols = tokens // rows
        if all(a % rows == 0 and b % cols == 0 for a, b in sizes):
            err = abs(rows / cols - h / w)
            if best is None or err < best[0]:
                best = (err, (rows, cols))
    return best[1] if best else None


def vision_config_for(encoder: str, image_size: tuple[int, int] | None = None) -> VisionConfig:
    if os.path.isdir(encoder):
        kind = detect_kind(encoder)
        with open(os.path.join(encoder, "config.json")) as f:
            raw = json.load(f)
        pre = vision_preprocessing(encoder, raw.get("vision_config", raw))
        height, width = image_size or (pre["image_height"], pre["image_width"])
        return VisionConfig(kind=kind, path=os.path.abspath(encoder), feature_layer=-2, image_height=height,
                            image_width=width, mean=pre["mean"], std=pre["std"], layers=(), strides=())
    if encoder.endswith(".pt"):
        if not os.path.isfile(encoder):
            raise FileNotFoundError(f"{encoder}: no such ultralytics checkpoint (nothing is downloaded)")
        arch = os.path.abspath(encoder)
    elif encoder in ("yolov9t", "yolov9s", "yolov9m", "yolov9c") or encoder.endswith(".yaml"):
        arch = encoder if encoder.endswith(".yaml") else encoder + ".yaml"
    else:
        raise ValueError(f"--encoder {encoder!r}: expected yolov9t, a local ultralytics .pt, or a local "
                         "CLIP/SigLIP directory")
    height, width = image_size or (192, 256)
    return VisionConfig(kind="yolov9", arch=arch, image_height=height, image_width=width)


def init_checkpoint(encoder: str, decoder: str, out: str, image_tokens: int = 0, max_seq_len: int = 0,
                    image_size: tuple[int, int] | None = None, resampler: str = "auto", seed: int = 0,
                    log=print) -> dict:
    """Write a nanovla checkpoint (pretrained encoder + decoder, fresh projector) to `out`."""
    torch.manual_seed(seed)
    gpt, tokenizer, provenance = load_hf_decoder(decoder, max_seq_len)
    vision_cfg = vision_config_for(encoder, image_size)
    encoder_module = build_vision_encoder(vision_cfg)  # loads the pretrained tower / detector once
    sizes = [(vision_cfg.image_height // s, vision_cfg.image_width // s) for s in encoder_module.strides]
    if not vision_cfg.strides:
        vision_cfg.strides = tuple(encoder_module.strides)
    if vision_cfg.kind in ("clip", "siglip"):
        vision_cfg.hf_config = encoder_module.hf_config_dict  # rebuildable without the directory
    if not image_tokens:
        image_tokens = 48 if vision_cfg.kind == "yolov9" else min(64, sizes[0][0] * sizes[0][1])
    grid = pick_grid(image_tokens, sizes) if resampler in ("auto", "grid") else None
    if resampler == "grid" and grid is None:
        raise ValueError(f"{image_tokens} image tokens do not tile the feature grids {sizes}; "
                         "choose another count or --resampler perceiver")
    n_embd = gpt.cfg.n_embd
    projector = ProjectorConfig(resampler="grid" if grid else "perceiver", grid=grid or (1, image_tokens),
                                num_queries=image_tokens, width=n_embd, heads=max(1, n_embd // 64), depth=2)
    cfg = ModelConfig(vision=vision_cfg, projector=projector, decoder=gpt.cfg)
    cfg.validate()

    model = VisionLanguageModel(cfg, tokenizer.image_id)  # a ViT is rebuilt from hf_config: copy its weights
    if vision_cfg.kind in ("clip", "siglip"):
        model.vision.load_state_dict(encoder_module.state_dict())
    del encoder_module
    model.decoder.load_state_dict(gpt.state_dict())
    if cfg.decoder.tie_embeddings:
        model.decoder.lm_head.weight = model.decoder.embed_tokens.weight
    n_params = {name: sum(p.numel() for p in part.parameters()) / 1e6
                for name, part in (("vision", model.vision), ("projector", model.projector), ("decoder", model.decoder))}
    info = {"encoder": encoder, "decoder": decoder, "image_tokens": image_tokens,
            "resampler": projector.resampler, "grid": list(projector.grid) if grid else None,
            "parameters_millions": {k: round(v, 3) for k, v in n_params.items()}}
    provenance = {**provenance, "init": info}
    save_checkpoint(out, model.eval(), tokenizer, {"init": info},
                    extra_files={PROVENANCE_FILE: json.dumps(provenance, indent=2)})
    log(f"wrote {out}: {', '.join(f'{k} {v:.2f}M' for k, v in n_params.items())} parameters, "
        f"{image_tokens} image tokens ({projector.resampler}), vocabulary {tokenizer.vocab_size}")
    return info
