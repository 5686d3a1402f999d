"""CLIP / SigLIP towers from tiny random checkpoints in a temporary directory."""

from __future__ import annotations

import pytest

from hf_helpers import save_tiny_vision

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_patch_tokens_equal_transformers_penultimate_layer(tmp_path, kind):
    from nanovla.model.config import VisionConfig
    from nanovla.model.vision_hf import HFVisionEncoder

    path = save_tiny_vision(str(tmp_path / kind), kind)
    encoder = HFVisionEncoder(VisionConfig(kind=kind, path=path, image_height=32, image_width=32)).eval()
    model_cls = transformers.CLIPVisionModel if kind == "clip" else transformers.SiglipVisionModel
    hf = model_cls.from_pretrained(path, local_files_only=True).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = hf(pixel_values=x, output_hidden_states=True).hidden_states[-2]
        (grid,) = encoder(x)
    if kind == "clip":
        ref = ref[:, 1:]  # the class token is not a patch
    assert grid.shape == (2, 32, 4, 4) and encoder.channels == [32] and encoder.strides == [8]
    assert float((grid.flatten(2).transpose(1, 2) - ref).abs().max()) <= 1e-5
    # the layers after feature_layer (and SigLIP's head) are gone: 3 layers -> 2 kept
    assert len(encoder.layers) == 2 and not any(k.startswith(("head", "post_layernorm")) for k in encoder.state_dict())


@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_vlm_from_pretrained_parts_round_trips_through_a_checkpoint(tmp_path, kind):
    """init -> checkpoint -> load without the encoder directory (hf_config) gives the same outputs;
    a non-native input size interpolates the position embeddings."""
    import shutil

    from hf_helpers import save_tiny_decoder

    from nanovla.model.checkpoint import load_checkpoint
    from nanovla.model.pretrained import init_checkpoint

    enc = save_tiny_vision(str(tmp_path / "enc"), kind)
    dec = save_tiny_decoder(str(tmp_path / "dec"), "smollm2")
    out = str(tmp_path / "ckpt")
    info = init_checkpoint(enc, dec, out, image_tokens=12, image_size=(48, 64), log=lambda m: None)
    assert info["resampler"] == "grid" and info["grid"] == [3, 4]  # a 6x8 patch grid pools to 3x4
    model, tok, config = load_checkpoint(out)
    v = config["model"]["vision"]
    assert v["kind"] == kind and v["hf_config"] and tuple(v["mean"]) == ((0.5,) * 3 if kind == "siglip" else
                                                                          tuple(v["mean"]))
    shutil.rmtree(enc)  # the checkpoint alone is enough from now on
    again, _, _ = load_checkpoint(out)
    pixels = torch.rand(1, 3, 48, 64)
    with torch.no_grad():
        a, b = model.encode_image(pixels), again.encode_image(pixels)
    assert a.shape == (1, 12, 64)
    torch.testing.assert_close(a, b)


def test_bad_directory_is_one_clear_error(tmp_path):
    from nanovla.model.config import VisionConfig
    from nanovla.model.vision_hf import HFVisionEncoder, detect_kind

    with pytest.raises(FileNotFoundError, match="nothing is downloaded"):
        HFVisionEncoder(VisionConfig(kind="clip", path=str(tmp_path / "absent")))
    with pytest.raises(ValueError, match="no config.json"):
        detect_kind(str(tmp_path))
