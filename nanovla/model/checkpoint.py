"""Checkpoints: a directory with config.json, model.safetensors, tokenizer.json, metrics.json.

Never pickled. Loading is strict: missing, unexpected or mis-shaped tensors are an error that
names them. Writing is atomic: files go to a temporary sibling directory that is renamed into
place, so an interrupted save never leaves a half checkpoint under the real name.
"""

from __future__ import annotations

import json
import os

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .checkpoint_files import (CHECKPOINT_FILES, FORMAT, CheckpointError, atomic_directory_write,  # noqa: F401
                               is_checkpoint, read_config, read_metrics)
from .config import ModelConfig
from .tokenizer import Tokenizer
from .vlm import VisionLanguageModel

def state_for_saving(model: VisionLanguageModel) -> dict[str, torch.Tensor]:
    sd = model.state_dict()
    if model.cfg.decoder.tie_embeddings:
        sd.pop("decoder.lm_head.weight", None)  # shared with the embedding
    return {k: v.detach().contiguous().cpu() for k, v in sd.items()}


def save_checkpoint(path: str, model: VisionLanguageModel, tokenizer: Tokenizer, metrics: dict | None = None,
                    extra_files: dict[str, str] | None = None) -> None:
    def write(tmp: str) -> None:
        config = {"format": FORMAT, "model": model.cfg.to_dict(), "image_token_id": model.image_token_id,
                  "special_tokens": tokenizer.special_ids()}
        with open(os.path.join(tmp, "config.json"), "w") as f:
            json.dump(config, f, indent=2)
        save_file(state_for_saving(model), os.path.join(tmp, "model.safetensors"), metadata={"format": FORMAT})
        tokenizer.save(os.path.join(tmp, "tokenizer.json"))
        with open(os.path.join(tmp, "metrics.json"), "w") as f:
            json.dump(metrics or {}, f, indent=2)
        for name, text in (extra_files or {}).items():
            with open(os.path.join(tmp, name), "w") as f:
                f.write(text)

    atomic_directory_write(path, write)


def check_state_dict(expected: dict[str, torch.Tensor], found: dict[str, torch.Tensor], where: str) -> None:
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    shapes = sorted(k for k in set(expected) & set(found) if tuple(expected[k].shape) != tuple(found[k].shape))
    problems = []

    def names(keys: list[str]) -> str:
        return ", ".join(keys[:6]) + (f" (+{len(keys) - 6} more)" if len(keys) > 6 else "")

    if missing:
        problems.append(f"missing {names(missing)}")
    if unexpected:
        problems.append(f"unexpected {names(unexpected)}")
    if shapes:
        problems.append("mis-shaped " + names([f"{k} {tuple(found[k].shape)} vs config {tuple(expected[k].shape)}"
                                                for k in shapes]))
    if problems:
        raise CheckpointError(f"{where}: weights do not fit config.json: " + "; ".join(problems))


def load_checkpoint(path: str, device: str = "cpu") -> tuple[VisionLanguageModel, Tokenizer, dict]:
    """(model in eval mode, tokenizer, config.json dict); CheckpointError on any mismatch."""
    data = read_config(path)
    try:
        cfg = ModelConfig.from_dict(data["model"])
        tokenizer = Tokenizer.load(os.path.join(path, "tokenizer.json"))
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: {e}") from None
    if tokenizer.vocab_size != cfg.decoder.vocab_size:
        raise CheckpointError(f"{path}: tokenizer has {tokenizer.vocab_size} tokens, config says {cfg.decoder.vocab_size}")
    if data.get("image_token_id") != tokenizer.image_id:
        raise CheckpointError(f"{path}: tokenizer's <|image|> id {tokenizer.image_id} differs from config's "
                              f"{data.get('image_token_id')}")
    with torch.device("cpu"):
        model = VisionLanguageModel(cfg, tokenizer.image_id)
    try:
        state = load_file(os.path.join(path, "model.safetensors"))
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{path}/model.safetensors: unreadable ({e})") from None
    expected = state_for_saving(model)
    check_state_dict(expected, state, path)
    # stored fp16/bf16 weights are widened to the model's dtype
    state = {k: v.to(expected[k].dtype) for k, v in state.items()}
    model.load_state_dict(state, strict=not cfg.decoder.tie_embeddings)
    model.eval().to(device)
    return model, tokenizer, data
