"""An older checkpoint's config.json (written before fields were added) loads through the real
loading path: each missing field takes its dataclass default, which is what the model did
before the field existed, so the same weights give the same outputs."""

from __future__ import annotations

import json
import os
import shutil

import pytest

# fields added to ModelConfig after the first checkpoints were written (git log -S on config.py)
ADDED = {"vision": ["hf_config"], "projector": ["positions", "projection"], "decoder": ["rope_scaling"]}


def test_an_older_config_json_loads_with_the_defaults(tiny_checkpoint, tmp_path):
    torch = pytest.importorskip("torch")
    from nanovla.model.checkpoint import load_checkpoint
    from nanovla.model.config import DecoderConfig, ProjectorConfig, VisionConfig

    old = str(tmp_path / "old")
    shutil.copytree(tiny_checkpoint, old)
    with open(os.path.join(old, "config.json")) as f:
        config = json.load(f)
    for section, names in ADDED.items():
        for name in names:
            del config["model"][section][name]
    with open(os.path.join(old, "config.json"), "w") as f:
        json.dump(config, f)

    model, _, data = load_checkpoint(old)
    assert all(name not in data["model"][section] for section, names in ADDED.items() for name in names)
    cfg = model.cfg
    assert cfg.vision.hf_config == VisionConfig().hf_config == {}
    assert cfg.projector.positions == ProjectorConfig().positions == "learned"
    assert cfg.projector.projection == ProjectorConfig().projection == "mlp2x_gelu"
    assert cfg.decoder.rope_scaling == DecoderConfig().rope_scaling == {}
    assert isinstance(cfg.vision.layers, tuple) and isinstance(cfg.projector.grid, tuple)  # JSON lists -> tuples

    current, _, _ = load_checkpoint(tiny_checkpoint)
    assert cfg == current.cfg
    generator = torch.Generator().manual_seed(0)
    pixels = torch.rand(1, 3, cfg.vision.image_height, cfg.vision.image_width, generator=generator)
    with torch.inference_mode():
        assert torch.equal(model.encode_image(pixels), current.encode_image(pixels))


def test_an_unknown_config_key_is_an_error(tiny_checkpoint, tmp_path):
    pytest.importorskip("torch")
    from nanovla.model.checkpoint import CheckpointError, load_checkpoint

    bad = str(tmp_path / "bad")
    shutil.copytree(tiny_checkpoint, bad)
    with open(os.path.join(bad, "config.json")) as f:
        config = json.load(f)
    config["model"]["decoder"]["n_experts"] = 8
    with open(os.path.join(bad, "config.json"), "w") as f:
        json.dump(config, f)
    with pytest.raises(CheckpointError, match="unknown keys: n_experts"):
        load_checkpoint(bad)
