"""The linear projector and stage linearize (an MLP projector swapped for a linear one fitted to it)."""

from __future__ import annotations

import pytest
import torch
from tiny_models import tiny_model_config


def test_linear_projection_is_one_linear_layer_and_unknown_ones_are_refused():
    from nanovla.model.config import ModelConfig, ProjectorConfig
    from nanovla.model.projector import Projector

    proj = Projector(ProjectorConfig(grid=(2, 3), width=32, projection="linear"), [4, 8], [(4, 6), (2, 3)], n_embd=16)
    assert set(proj.state_dict()) == {"pos", "mlp.0.weight", "mlp.0.bias", "resampler.norm.weight",
                                      "resampler.norm.bias"}
    assert proj([torch.rand(2, 4, 4, 6), torch.rand(2, 8, 2, 3)]).shape == (2, 6, 16)
    with pytest.raises(ValueError, match="unknown projector projection 'mlp3'"):
        ModelConfig(projector=ProjectorConfig(projection="mlp3")).validate()


def test_fit_linear_recovers_a_linear_map():
    from nanovla.training.linearize import fit_linear

    g = torch.Generator().manual_seed(0)
    x = torch.randn(500, 6, generator=g, dtype=torch.float64)
    w, b = torch.randn(3, 6, generator=g, dtype=torch.float64), torch.randn(3, generator=g, dtype=torch.float64)
    fw, fb, r2 = fit_linear(x, x @ w.T + b, ridge=0.0)
    torch.testing.assert_close(fw, w)
    torch.testing.assert_close(fb, b)
    assert r2 == pytest.approx(1.0)
    # a target no linear map explains scores far lower
    _, _, r2_bad = fit_linear(x, torch.randn(500, 3, generator=g, dtype=torch.float64), ridge=0.0)
    assert r2_bad < 0.1


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    from data_helpers import generate_scene_dir

    return generate_scene_dir(str(tmp_path_factory.mktemp("scenes")), count=6, seed=4)


def test_linearize_stage_fits_the_mlp_keeps_every_other_weight_and_sft_continues(tmp_path, scenes):
    from tiny_models import tiny_tokenizer

    from nanovla.model.checkpoint import load_checkpoint, read_metrics, save_checkpoint
    from nanovla.training.train import TrainConfig, train
    from nanovla.model.vlm import VisionLanguageModel

    torch.manual_seed(0)
    tok = tiny_tokenizer()
    cfg = tiny_model_config()
    cfg.decoder.vocab_size = tok.vocab_size
    model = VisionLanguageModel(cfg, tok.image_id)
    with torch.no_grad():  # a random encoder's tokens barely differ; trained per-token places make them
        model.projector.pos.normal_(std=1.0)
    save_checkpoint(str(tmp_path / "mlp"), model, tok)
    run = {"data": scenes, "save_every": 0, "log_every": 1, "eval_scenes": 0, "heldout_scenes": 0, "seed": 0}
    train(TrainConfig(stage="linearize", init=str(tmp_path / "mlp"), out=str(tmp_path / "lin"), **run),
          log=lambda m: None)

    old, _, _ = load_checkpoint(str(tmp_path / "mlp"))
    new, _, _ = load_checkpoint(str(tmp_path / "lin"))
    assert new.cfg.projector.projection == "linear" and old.cfg.projector.projection == "mlp2x_gelu"
    metrics = read_metrics(str(tmp_path / "lin"))
    assert metrics["stage"] == "linearize" and metrics["fit_scenes"] == 6
    assert 0.5 < metrics["fit_r2"] <= 1.0, metrics
    old_state, new_state = old.state_dict(), new.state_dict()
    for name, value in new_state.items():
        if not name.startswith("projector.mlp."):
            torch.testing.assert_close(value, old_state[name], rtol=0, atol=0, msg=name)
    # the image tokens are close to the MLP's: the decoder sees almost what it saw before
    pixels = torch.rand(3, 3, 64, 96)
    with torch.no_grad():
        a, b = old.encode_image(pixels), new.encode_image(pixels)
    assert float((a - b).norm() / a.norm()) < 0.5

    with pytest.raises(ValueError, match="linear already"):
        train(TrainConfig(stage="linearize", init=str(tmp_path / "lin"), out=str(tmp_path / "again"), **run),
              log=lambda m: None)
    # an SFT stage starts from the linear checkpoint and trains the new projector
    train(TrainConfig(stage="sft", init=str(tmp_path / "lin"), out=str(tmp_path / "sft"), steps=2, batch_size=4,
                      lr=1e-3, warmup_steps=1, train_last_k=1, **run), log=lambda m: None)
    tuned, _, _ = load_checkpoint(str(tmp_path / "sft"))
    assert tuned.cfg.projector.projection == "linear"
    assert not torch.equal(tuned.projector.mlp[0].weight, new.projector.mlp[0].weight)


def test_linearize_needs_an_init_checkpoint():
    from nanovla.training.train import TrainConfig

    with pytest.raises(ValueError, match="needs --init"):
        TrainConfig(stage="linearize").validate()
