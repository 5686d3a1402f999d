"""Tiny models and tokenizers built in-process for tests (never downloaded, never cached).

A module of its own (not conftest.py): tests/ros has its own conftest, and `from conftest import`
would pick whichever was imported first."""

from __future__ import annotations

import numpy as np


def tiny_model_config(resampler: str = "grid"):
    from nanovla.model.config import DecoderConfig, ModelConfig, ProjectorConfig, VisionConfig

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
    from nanovla.model.tokenizer import Tokenizer

    return Tokenizer.train(corpus(data, np.random.default_rng(0)), vocab_size=vocab_size)


def build_tiny_model(resampler: str = "grid", seed: int = 0):
    import torch

    from nanovla.model.vlm import VisionLanguageModel

    torch.manual_seed(seed)
    tok = tiny_tokenizer()
    cfg = tiny_model_config(resampler)
    cfg.decoder.vocab_size = tok.vocab_size
    return VisionLanguageModel(cfg, tok.image_id).eval(), tok
