"""Shared fixtures: tiny models and data built in-process (never downloaded, never cached)."""

from __future__ import annotations

import os

import numpy as np
import pytest

os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")


def tiny_model_config(resampler: str = "grid"):
    from nanovla.config import DecoderConfig, ModelConfig, ProjectorConfig, VisionConfig

    return ModelConfig(
        vision=VisionConfig(image_height=64, image_width=96),
        projector=ProjectorConfig(resampler=resampler, grid=(2, 3), num_queries=6, width=32, heads=2, depth=1),
        decoder=DecoderConfig(n_layer=2, n_embd=64, n_head=4, n_kv_head=2, mlp_hidden=128, max_seq_len=128),
    )


def tiny_tokenizer(vocab_size: int = 400):
    from nanovla.data.dataset import corpus
    from nanovla.data.scenes import generate
    from nanovla.data.dataset import SceneSet

    scenes = [generate("train", 123, i)[1] for i in range(40)]
    data = SceneSet(np.zeros((len(scenes), 1, 1, 3), np.uint8), scenes, "train")
    from nanovla.tokenizer import Tokenizer

    return Tokenizer.train(corpus(data, np.random.default_rng(0)), vocab_size=vocab_size)


def build_tiny_model(resampler: str = "grid", seed: int = 0):
    import torch

    from nanovla.vlm import VisionLanguageModel

    torch.manual_seed(seed)
    tok = tiny_tokenizer()
    cfg = tiny_model_config(resampler)
    cfg.decoder.vocab_size = tok.vocab_size
    return VisionLanguageModel(cfg, tok.image_id).eval(), tok


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> str:
    """A randomly initialised tiny checkpoint directory (config/weights/tokenizer/metrics)."""
    from nanovla.checkpoint import save_checkpoint

    model, tok = build_tiny_model()
    path = str(tmp_path_factory.mktemp("ckpt") / "tiny")
    save_checkpoint(path, model, tok, {"note": "random tiny model for tests"})
    return path


@pytest.fixture(scope="session")
def scene_images():
    """A few generated 640x480 RGB frames with their scene graphs."""
    from nanovla.data.scenes import generate

    return [generate("eval", 7, i) for i in range(4)]
