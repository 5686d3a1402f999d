"""Pretrained decoders: tiny random Llama / Qwen2 / SmolLM2 checkpoints saved to a temporary
directory load into nanovla's GPT with logits equal to transformers' (fp32, <= 1e-4)."""

from __future__ import annotations

import pytest

from hf_helpers import save_tiny_decoder

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

LLAMA3_SCALING = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                  "original_max_position_embeddings": 32}


def _logits_error(path):
    from nanovla.model.decoder_hf import load_hf_decoder

    gpt, tok, provenance = load_hf_decoder(path)
    hf = transformers.AutoModelForCausalLM.from_pretrained(path, local_files_only=True).eval()
    ids = torch.tensor([tok.encode("the red cube is left of the blue ball. hello world, a robot arm " * 2)])
    with torch.no_grad():
        ref = hf(ids).logits
        ours, _ = gpt(gpt.embed_tokens(ids))
    keep = provenance["hf_tokenizer_size"]  # rows past the tokenizer (Qwen2 padding) are dropped
    return float((ref[..., :keep] - ours[..., :keep]).abs().max()), gpt, tok, provenance, ids


@pytest.mark.parametrize("family,pad,overrides", [
    ("llama", 0, {}),
    ("qwen2", 13, {}),  # an embedding padded past the tokenizer, q/k/v biases, untied head
    ("smollm2", 0, {}),  # tied embeddings
    ("llama", 0, {"rope_scaling": LLAMA3_SCALING}),
    ("llama", 0, {"rope_scaling": {"rope_type": "linear", "factor": 2.0}}),
])
def test_logits_parity(tmp_path, family, pad, overrides):
    path = save_tiny_decoder(str(tmp_path / family), family, vocab_pad=pad, **overrides)
    error, gpt, tok, provenance, ids = _logits_error(path)
    assert ids.shape[1] > 40  # past original_max_position_embeddings: the scaling matters
    assert error <= 1e-4, error
    assert gpt.cfg.tie_embeddings == (family == "smollm2")
    assert gpt.cfg.attention_bias == (family == "qwen2")
    if "rope_scaling" in overrides:
        assert gpt.cfg.rope_scaling["rope_type"] == overrides["rope_scaling"]["rope_type"]


def test_new_tokens_are_mean_rows_and_never_greedy(tmp_path):
    from nanovla.model.tokenizer import SPECIAL_TOKENS

    path = save_tiny_decoder(str(tmp_path / "m"), "llama")
    _, gpt, tok, provenance, ids = _logits_error(path)
    new = provenance["new_token_ids"]
    assert sorted(new) == sorted(tok.hf.token_to_id(t) for t in SPECIAL_TOKENS)
    assert tok.vocab_size == gpt.cfg.vocab_size == provenance["hf_tokenizer_size"] + len(SPECIAL_TOKENS)
    emb = gpt.embed_tokens.weight
    keep = provenance["hf_tokenizer_size"]
    torch.testing.assert_close(emb[new[0]], emb[:keep].mean(0))
    with torch.no_grad():
        logits, _ = gpt(gpt.embed_tokens(ids))
    assert int(logits.argmax(-1).max()) < keep  # a mean row's logit is the mean logit


def test_rope_scaling_changes_logits(tmp_path):
    """The scaled checkpoint differs from the same weights without scaling (so parity above is real)."""
    from nanovla.model.decoder import GPT
    from nanovla.model.decoder_hf import load_hf_decoder

    path = save_tiny_decoder(str(tmp_path / "s"), "llama", rope_scaling=LLAMA3_SCALING)
    gpt, tok, _ = load_hf_decoder(path)
    cfg = gpt.cfg
    plain = GPT(type(cfg)(**{**cfg.__dict__, "rope_scaling": {}}))
    plain.load_state_dict(gpt.state_dict())
    ids = torch.tensor([tok.encode("a robot arm picks up the green cup. " * 4)])
    with torch.no_grad():
        a, _ = gpt(gpt.embed_tokens(ids))
        b, _ = plain(plain.embed_tokens(ids))
    assert float((a - b).abs().max()) > 1e-3


def test_export_back_to_transformers(tmp_path):
    from nanovla.model.decoder_hf import export_hf, load_hf_decoder, read_hf_config

    path = save_tiny_decoder(str(tmp_path / "q"), "qwen2")
    gpt, tok, _ = load_hf_decoder(path)
    export_hf(str(tmp_path / "back"), gpt, tok, read_hf_config(path))
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "back"), local_files_only=True).eval()
    ids = torch.tensor([tok.encode("what colour is the box?") + [tok.image_id]])
    with torch.no_grad():
        ref = hf(ids).logits
        ours, _ = gpt(gpt.embed_tokens(ids))
    assert ref.shape == ours.shape
    assert float((ref - ours).abs().max()) <= 1e-4


def test_clear_errors(tmp_path):
    from nanovla.model.decoder_hf import HFDecoderError, load_hf_decoder

    with pytest.raises(HFDecoderError, match="no such directory"):
        load_hf_decoder(str(tmp_path / "absent"))
    (tmp_path / "gpt2").mkdir()
    (tmp_path / "gpt2" / "config.json").write_text('{"model_type": "gpt2"}')
    with pytest.raises(HFDecoderError, match="not supported"):
        load_hf_decoder(str(tmp_path / "gpt2"))
    path = save_tiny_decoder(str(tmp_path / "dyn"), "llama", rope_scaling={"rope_type": "dynamic", "factor": 2.0})
    with pytest.raises(ValueError, match="dynamic"):
        load_hf_decoder(path)
