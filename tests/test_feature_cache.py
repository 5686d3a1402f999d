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
    ids, mask, idx = mix.batch_rows(6, tok.pad_id)
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
