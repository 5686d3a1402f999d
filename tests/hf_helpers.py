"""Tiny Hugging Face checkpoints built in-process and saved to a temporary directory (never
downloaded): Llama, Qwen2, a SmolLM2-like Llama, CLIP and SigLIP vision towers."""

from __future__ import annotations

import json
import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

TEXT = [
    "the red cube is left of the blue ball.", "a robot arm picks up the green cup.",
    "there are three bottles on the table.", "what colour is the box? it is yellow.",
    "the camera sees a white ring near a pink cone.", "hello world, this is a tiny tokenizer.",
] * 20


def tiny_hf_tokenizer(vocab_size: int = 300):
    """A byte-level BPE like SmolLM2's/Qwen2's (no nanovla tokens; an <|endoftext|> special)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(TEXT, trainer=trainer)
    return tok


def save_tiny_decoder(path: str, family: str = "llama", seed: int = 0, vocab_pad: int = 0, **overrides) -> str:
    """family: llama | qwen2 | smollm2 (tied, Llama config as SmolLM2-135M's, shrunk)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    tok = tiny_hf_tokenizer()
    vocab = tok.get_vocab_size() + vocab_pad
    common = dict(vocab_size=vocab, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                  bos_token_id=0, eos_token_id=0, pad_token_id=None)
    torch.manual_seed(seed)
    if family == "qwen2":
        cfg = Qwen2Config(**{**common, "rope_theta": 1000000.0, "rms_norm_eps": 1e-6,
                             "tie_word_embeddings": False, **overrides})
        model = Qwen2ForCausalLM(cfg)
        with torch.no_grad():  # random biases so the bias mapping is really checked
            for layer in model.model.layers:
                for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                    proj.bias.normal_(0, 0.1)
    else:
        extra = {"tie_word_embeddings": True, "rope_theta": 100000.0, "rms_norm_eps": 1e-5} if family == "smollm2" \
            else {"tie_word_embeddings": False, "rope_theta": 500000.0}
        cfg = LlamaConfig(**{**common, **extra, **overrides})
        model = LlamaForCausalLM(cfg)
    with torch.no_grad():  # larger weights than the 0.02 init so the logits are far from uniform
        for p in model.parameters():
            if p.ndim == 2:
                p.normal_(0, 0.15)
        for n, p in model.named_parameters():
            if n.endswith("norm.weight"):
                p.uniform_(0.5, 1.5)
    model.eval().save_pretrained(path)
    tok.save(os.path.join(path, "tokenizer.json"))
    return path


def save_tiny_vision(path: str, kind: str = "clip", image_size: int = 32, patch_size: int = 8, seed: int = 0) -> str:
    import torch
    from transformers import CLIPVisionConfig, CLIPVisionModel, SiglipVisionConfig, SiglipVisionModel

    torch.manual_seed(seed)
    common = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                  image_size=image_size, patch_size=patch_size)
    if kind == "clip":
        model = CLIPVisionModel(CLIPVisionConfig(**common))
        mean, std = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]
    else:
        model = SiglipVisionModel(SiglipVisionConfig(**common))
        mean, std = [0.5, 0.5, 0.5], [0.5, 0.5, 0.5]
    model.eval().save_pretrained(path)
    with open(os.path.join(path, "preprocessor_config.json"), "w") as f:
        json.dump({"image_mean": mean, "image_std": std, "size": {"height": image_size, "width": image_size},
                   "do_resize": True, "resample": 3}, f)
    return path
