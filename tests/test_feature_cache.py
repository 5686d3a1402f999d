"""A frozen encoder's pooled features, computed once per scene, train exactly as pixels do."""

import os

import numpy as np
import pytest
import torch

from nanovla.data.dataset import Mixture, SceneSet
from nanovla.data.scenes import generate
from nanovla.training.feature_cache import pooled_feature_cache
from nanovla.runtime.preprocess import resize_uint8
from tiny_models import build_tiny_model


def _scenes(n: int, height: int = 64, width: int = 96) -> SceneSet:
    pairs = [generate("train", 11, i) for i in range(n)]
    return SceneSet(np.stack([resize_uint8(im, height, width) for im, _ in pairs]), [s for _, s in pairs], "train")


def test_loss_from_pooled_features_equals_loss_from_pixels(tmp_path):
    model, tok = build_tiny_model()
    data = _scenes(12)
    pooled = pooled_feature_cache(model, data, str(tmp_path), log=None)
    assert pooled.shape == (12, model.image_tokens, model.projector.resampler.out_dim)
    mix = Mixture(data, tok, model.image_tokens, {"caption": 0.5, "qa": 0.5}, seed=0, max_len=128)
    ids, mask, idx, _ = mix.batch_rows(6, tok.pad_id)
    pixels = torch.from_numpy(data.images[idx].astype(np.float32).transpose(0, 3, 1, 2) / 255)
    ids_t, mask_t = torch.from_numpy(ids), torch.from_numpy(mask)
    from_pixels = model(ids_t, mask_t, pixels)
    from_pooled = model(ids_t, mask_t, None, torch.from_numpy(np.ascontiguousarray(pooled[idx])))
    torch.testing.assert_close(from_pooled, from_pixels, rtol=1e-5, atol=1e-6)
    # the same data stream with or without pixels: batch() is batch_rows() plus the images
    a = Mixture(data, tok, model.image_tokens, {"caption": 0.5, "qa": 0.5}, seed=3, max_len=128).batch(4, tok.pad_id)
    b = Mixture(data, tok, model.image_tokens, {"caption": 0.5, "qa": 0.5}, seed=3, max_len=128).batch_rows(4, tok.pad_id)
    np.testing.assert_array_equal(a[0], b[0])
    assert a[2].shape[0] == len(b[2])


def test_cache_is_reused_and_keyed_by_encoder_weights_and_images(tmp_path):
    model, _ = build_tiny_model()
    data = _scenes(6)
    first = pooled_feature_cache(model, data, str(tmp_path), log=None)
    files = os.listdir(tmp_path)
    assert len(files) == 1
    mtime = os.path.getmtime(tmp_path / files[0])
    again = pooled_feature_cache(model, data, str(tmp_path), log=None)
    assert os.path.getmtime(tmp_path / files[0]) == mtime and os.listdir(tmp_path) == files
    np.testing.assert_array_equal(first, again)
    with torch.no_grad():  # a changed encoder never reads stale features
        next(model.vision.parameters()).add_(0.5)
    changed = pooled_feature_cache(model, data, str(tmp_path), log=None)
    assert len(os.listdir(tmp_path)) == 2 and not np.allclose(changed, first)
    other = _scenes(6)
    other.images[3] = 255 - other.images[3]  # other images, same count
    pooled_feature_cache(model, other, str(tmp_path), log=None)
    assert len(os.listdir(tmp_path)) == 3


def test_perceiver_resampler_has_no_pooled_features(tmp_path):
    model, _ = build_tiny_model("perceiver")
    with pytest.raises(ValueError, match="grid resampler"):
        pooled_feature_cache(model, _scenes(2), str(tmp_path), log=None)


def test_mono_captions_show_the_image_in_grey_and_name_no_colour():
    """mono_share: a grey image (what a mono8 camera gives) with a caption that names kinds and
    places but no colour; the pooled path computes those rows' features from the grey pixels."""
    from nanovla.data.dataset import to_mono
    from nanovla.data.scenes import COLOR_NAMES, KINDS

    model, tok = build_tiny_model()
    data = _scenes(8)
    mix = Mixture(data, tok, model.image_tokens, {"caption": 0.5, "mono": 0.5}, seed=1, max_len=128)
    ids, mask, pixels = mix.batch(16, tok.pad_id)
    _, _, idx, mono = Mixture(data, tok, model.image_tokens, {"caption": 0.5, "mono": 0.5}, seed=1,
                              max_len=128).batch_rows(16, tok.pad_id)
    assert 0 < mono.sum() < len(mono)
    grey = pixels[mono]
    np.testing.assert_array_equal(grey[:, 0], grey[:, 1])  # grey: the channels agree
    np.testing.assert_array_equal(np.rint(pixels[~mono] * 255), data.images[idx[~mono]].transpose(0, 3, 1, 2).astype(np.float32))
    assert not np.array_equal(pixels[~mono][:, 0], pixels[~mono][:, 1])
    # rows are image rows in placeholder order: the mono ones answer without colour words
    for r in range(len(mono)):
        answer = tok.decode([t for t, m in zip(ids[r], mask[r]) if m]).split()
        assert any(k in " ".join(answer) for k in KINDS) or "empty" in answer
        assert not set(answer) & set(COLOR_NAMES) if mono[r] else set(answer) & set(COLOR_NAMES) or "empty" in answer
    red = np.zeros((2, 2, 3), np.uint8)
    red[..., 0] = 255
    assert to_mono(red)[0, 0].tolist() == [76, 76, 76]  # BT.601 luma of pure red


def test_sft_with_a_frozen_encoder_trains_on_grey_features_for_mono_rows(tmp_path, monkeypatch):
    """The pooled path: the cache holds the colour images' features; a mono row's features are the
    frozen encoder's on the grey image (what a step from pixels would see)."""
    from data_helpers import generate_scene_dir

    from nanovla.data.dataset import to_mono
    from nanovla.model.checkpoint import save_checkpoint
    from nanovla.training import train as train_module

    model, tok = build_tiny_model()
    save_checkpoint(str(tmp_path / "init"), model, tok)
    scenes = generate_scene_dir(str(tmp_path / "scenes"), count=6, seed=4)
    seen = []
    original = train_module.VisionLanguageModel.forward

    def spy(self, ids, loss_mask, pixels=None, pooled=None):
        seen.append(pooled.clone())
        return original(self, ids, loss_mask, pixels, pooled)

    monkeypatch.setattr(train_module.VisionLanguageModel, "forward", spy)
    monkeypatch.setattr(train_module.Mixture, "batch_rows", _all_mono(train_module.Mixture.batch_rows))
    train_module.train(train_module.TrainConfig(
        stage="sft", init=str(tmp_path / "init"), out=str(tmp_path / "out"), data=scenes, steps=1, batch_size=3,
        caption_share=0.0, qa_share=0.0, text_share=0.0, mono_share=1.0, save_every=0, eval_scenes=0,
        heldout_scenes=0, cache_dir=str(tmp_path / "cache")), log=lambda m: None)
    data = train_module.load_data_dir(scenes, 64, 96, log=lambda m: None)
    assert len(seen) == 1 and seen[0].shape[0] == 3
    expected = [model.pooled_features(torch.from_numpy(to_mono(data.images[i:i + 1]).astype(np.float32)
                                                       .transpose(0, 3, 1, 2) / 255)) for i in range(len(data))]
    colour = [model.pooled_features(torch.from_numpy(data.images[i:i + 1].astype(np.float32)
                                                     .transpose(0, 3, 1, 2) / 255)) for i in range(len(data))]
    for row in seen[0]:
        to_grey = min(float((row - e[0]).abs().max()) for e in expected)
        to_colour = min(float((row - c[0]).abs().max()) for c in colour)
        assert to_grey < to_colour / 100, (to_grey, to_colour)  # (a random encoder: grey and colour are close)


def _all_mono(batch_rows):
    def wrapped(self, batch_size, pad_id):
        ids, mask, idx, mono = batch_rows(self, batch_size, pad_id)
        assert mono is not None and mono.all()
        return ids, mask, idx, mono
    return wrapped
