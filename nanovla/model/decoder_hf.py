"""Pretrained decoders from a local Hugging Face directory (Llama, Qwen2, SmolLM2) and back.

nanovla's GPT uses the same parameter names as Hugging Face's Llama/Qwen2 (`layers.i.self_attn.q_proj`,
`mlp.gate_proj`, ...) and the same RoPE layout (rotate_half), so the mapping is a prefix change.
What needs care:

- the tokenizer: the checkpoint's own `tokenizer.json` plus nanovla's special tokens. New tokens get
  new embedding rows (and lm_head rows when untied) set to the mean of the pretrained rows, so at
  initialisation a new token's logit is the mean logit: it is never a greedy pick, and plain text
  generation is unchanged.
- the vocabulary: Qwen2 pads its embedding matrix past the tokenizer (151936 rows for 151665
  tokens). nanovla keeps exactly one row per tokenizer id, so padding rows are dropped and the
  nanovla tokens take the ids right after the tokenizer's own.
- RoPE theta and the static scalings (linear, llama3), GQA, Qwen2's q/k/v biases, tied embeddings.

Reads safetensors only (single file or sharded with model.safetensors.index.json); never downloads.
"""

from __future__ import annotations

import json
import os

import torch
from tokenizers import AddedToken
from tokenizers import Tokenizer as HFTokenizer

from .config import DecoderConfig
from .checkpoint import atomic_directory_write
from .decoder import GPT, scale_rope_frequencies
from .tokenizer import SPECIAL_TOKENS, Tokenizer

SUPPORTED_MODEL_TYPES = ("llama", "qwen2", "mistral")  # SmolLM2 is model_type "llama"
PROVENANCE_FILE = "hf_source.json"  # written beside a checkpoint made from a pretrained decoder


class HFDecoderError(ValueError):
    """A directory that is not a usable pretrained decoder; the message says why in one line."""


def read_hf_config(path: str) -> dict:
    config_path = os.path.join(path, "config.json")
    if not os.path.isfile(config_path):
        raise HFDecoderError(f"{path}: no config.json (expected a local Hugging Face model directory)")
    with open(config_path) as f:
        config = json.load(f)
    if "text_config" in config and config.get("model_type") not in SUPPORTED_MODEL_TYPES:
        config = config["text_config"]
    if config.get("model_type") not in SUPPORTED_MODEL_TYPES:
        raise HFDecoderError(f"{path}: model_type {config.get('model_type')!r} is not supported "
                             f"(supported: {', '.join(SUPPORTED_MODEL_TYPES)})")
    return config


def rope_settings(hf: dict) -> tuple[float, dict]:
    """(theta, scaling) from either the classic keys (rope_theta, rope_scaling) or transformers 5's
    `rope_parameters`."""
    params = hf.get("rope_parameters") or {}
    theta = float(hf.get("rope_theta") or params.get("rope_theta") or 10000.0)
    scaling = dict(hf.get("rope_scaling") or {})
    if not scaling and params.get("rope_type", "default") != "default":
        scaling = {k: v for k, v in params.items() if k != "rope_theta"}
    if scaling:
        scaling.setdefault("rope_type", scaling.pop("type", "default"))
        scaling.setdefault("original_max_position_embeddings", hf.get("original_max_position_embeddings")
                           or hf.get("max_position_embeddings"))
    if scaling.get("rope_type") == "default":
        scaling = {}
    return theta, scaling


def decoder_config_from_hf(hf: dict, vocab_size: int, max_seq_len: int = 0) -> DecoderConfig:
    n_head = hf["num_attention_heads"]
    n_embd = hf["hidden_size"]
    head_dim = hf.get("head_dim") or n_embd // n_head
    if head_dim * n_head != n_embd:
        raise HFDecoderError(f"head_dim {head_dim} x {n_head} heads != hidden_size {n_embd}: not supported")
    model_type = hf["model_type"]
    if model_type in ("llama", "mistral") and (hf.get("attention_bias") or hf.get("mlp_bias")):
        raise HFDecoderError("Llama checkpoints with attention_bias/mlp_bias are not supported (o_proj/MLP biases)")
    if hf.get("use_sliding_window") or (model_type == "mistral" and hf.get("sliding_window")):
        raise HFDecoderError("sliding-window attention is not supported")
    if hf.get("hidden_act", "silu") != "silu":
        raise HFDecoderError(f"hidden_act {hf.get('hidden_act')!r}: only SwiGLU (silu) is supported")
    theta, scaling = rope_settings(hf)

    scale_rope_frequencies(torch.ones(2), scaling)  # refuse an unsupported scaling now, not at load
    return DecoderConfig(
        vocab_size=vocab_size,
        n_layer=hf["num_hidden_layers"],
        n_embd=n_embd,
        n_head=n_head,
        n_kv_head=hf.get("num_key_value_heads") or n_head,
        mlp_hidden=hf["intermediate_size"],
        max_seq_len=max_seq_len or min(int(hf.get("max_position_embeddings", 2048)), 2048),
        rope_theta=theta,
        norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
        attention_bias=model_type == "qwen2",
        rope_scaling=scaling,
    )


def read_hf_weights(path: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    single = os.path.join(path, "model.safetensors")
    index = os.path.join(path, "model.safetensors.index.json")
    if os.path.isfile(single):
        return load_file(single)
    if os.path.isfile(index):
        with open(index) as f:
            shards = sorted(set(json.load(f)["weight_map"].values()))
        state: dict[str, torch.Tensor] = {}
        for shard in shards:
            state.update(load_file(os.path.join(path, shard)))
        return state
    if os.path.isfile(os.path.join(path, "pytorch_model.bin")):
        raise HFDecoderError(f"{path}: only pytorch_model.bin (a pickle); convert it to safetensors first")
    raise HFDecoderError(f"{path}: no model.safetensors or model.safetensors.index.json")


def extend_tokenizer(path: str) -> tuple[Tokenizer, int]:
    """The checkpoint's tokenizer.json plus nanovla's special tokens -> (Tokenizer, size before)."""
    file = os.path.join(path, "tokenizer.json")
    if not os.path.isfile(file):
        raise HFDecoderError(f"{path}: no tokenizer.json (a fast tokenizer file is needed)")
    hf = HFTokenizer.from_file(file)
    before = hf.get_vocab_size(with_added_tokens=True)
    missing = [t for t in SPECIAL_TOKENS if hf.token_to_id(t) is None]
    hf.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in missing])
    return Tokenizer(hf), before


def hf_to_nanovla(hf_state: dict[str, torch.Tensor], cfg: DecoderConfig) -> dict[str, torch.Tensor]:
    """Hugging Face causal-LM state dict -> nanovla GPT state dict (embedding rows as stored)."""
    out = {}
    for name, tensor in hf_state.items():
        if name.endswith("rotary_emb.inv_freq"):
            continue
        key = name[len("model."):] if name.startswith("model.") else name
        out[key] = tensor
    if cfg.tie_embeddings:
        out.pop("lm_head.weight", None)
    elif "lm_head.weight" not in out:
        raise HFDecoderError("untied checkpoint without lm_head.weight")
    return out


def nanovla_to_hf(state: dict[str, torch.Tensor], cfg: DecoderConfig) -> dict[str, torch.Tensor]:
    out = {}
    for key, tensor in state.items():
        if key.startswith("rope_"):
            continue
        if key == "lm_head.weight":
            if not cfg.tie_embeddings:
                out[key] = tensor
            continue
        out["model." + key] = tensor
    return out


def resize_rows(matrix: torch.Tensor, rows: int, keep: int, new_ids: list[int]) -> torch.Tensor:
    """(rows, C): the first `keep` pretrained rows copied; rows past them and the new tokens' rows
    set to the mean of the pretrained rows (their logit starts as the mean logit)."""
    out = torch.empty(rows, matrix.shape[1], dtype=matrix.dtype)
    n = min(keep, rows, matrix.shape[0])
    out[:n] = matrix[:n]
    mean = matrix[:n].float().mean(0).to(matrix.dtype)
    out[n:] = mean
    for i in new_ids:
        out[i] = mean
    return out


def load_hf_decoder(path: str, max_seq_len: int = 0) -> tuple[GPT, Tokenizer, dict]:
    """(nanovla GPT with the pretrained weights, extended tokenizer, provenance dict)."""
    if not os.path.isdir(path):
        raise HFDecoderError(f"{path}: no such directory (pretrained decoders load from a local directory)")
    hf = read_hf_config(path)
    tokenizer, before = extend_tokenizer(path)
    cfg = decoder_config_from_hf(hf, tokenizer.vocab_size, max_seq_len)
    state = hf_to_nanovla(read_hf_weights(path), cfg)
    stored_rows = state["embed_tokens.weight"].shape[0]
    if before > stored_rows:
        raise HFDecoderError(f"{path}: tokenizer has {before} tokens but the embedding only {stored_rows} rows")
    new_ids = [tokenizer.hf.token_to_id(t) for t in SPECIAL_TOKENS if tokenizer.hf.token_to_id(t) >= before]
    state["embed_tokens.weight"] = resize_rows(state["embed_tokens.weight"], cfg.vocab_size, before, new_ids)
    if not cfg.tie_embeddings:
        state["lm_head.weight"] = resize_rows(state["lm_head.weight"], cfg.vocab_size, before, new_ids)
    model = GPT(cfg)  # random init is overwritten below (every tensor is checked to be present)
    expected = {k for k in model.state_dict() if not k.startswith("rope_")}
    if cfg.tie_embeddings:
        expected.discard("lm_head.weight")
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise HFDecoderError(f"{path}: weights do not match the config: missing {missing[:5]}, "
                             f"unexpected {unexpected[:5]}")
    model.load_state_dict({k: v.float() for k, v in state.items()}, strict=False)
    if cfg.tie_embeddings:
        model.lm_head.weight = model.embed_tokens.weight
    provenance = {
        "path": os.path.abspath(path),
        "model_type": hf["model_type"],
        "hf_vocab_rows": stored_rows,
        "hf_tokenizer_size": before,
        "new_token_ids": new_ids,
        "eos_token_id": hf.get("eos_token_id"),
        "bos_token_id": hf.get("bos_token_id"),
        "hf_config": hf,
    }
    return model, tokenizer, provenance


def export_hf(path: str, decoder: GPT, tokenizer: Tokenizer, base_config: dict | None = None) -> None:
    """Write the decoder as a Hugging Face directory (config.json, model.safetensors, tokenizer.json)
    that `AutoModelForCausalLM.from_pretrained(path)` loads; image tokens are not part of it."""
    from safetensors.torch import save_file


    cfg = decoder.cfg
    model_type = (base_config or {}).get("model_type", "qwen2" if cfg.attention_bias else "llama")
    config = {k: v for k, v in (base_config or {}).items() if k not in ("rope_parameters", "rope_scaling")}
    config.update({
        "model_type": model_type,
        "architectures": ["Qwen2ForCausalLM" if model_type == "qwen2" else "LlamaForCausalLM"],
        "vocab_size": cfg.vocab_size, "hidden_size": cfg.n_embd, "intermediate_size": cfg.mlp_hidden,
        "num_hidden_layers": cfg.n_layer, "num_attention_heads": cfg.n_head,
        "num_key_value_heads": cfg.n_kv_head, "head_dim": cfg.n_embd // cfg.n_head,
        "max_position_embeddings": max(cfg.max_seq_len, int(config.get("max_position_embeddings", 0))),
        "rms_norm_eps": cfg.norm_eps, "tie_word_embeddings": cfg.tie_embeddings, "hidden_act": "silu",
        "rope_theta": cfg.rope_theta, "rope_scaling": dict(cfg.rope_scaling) or None,
        "bos_token_id": tokenizer.bos_id if "bos_token_id" not in config else config["bos_token_id"],
    })
    if model_type in ("llama", "mistral"):
        config.update({"attention_bias": False, "mlp_bias": False})
    state = {k: v.detach().contiguous().cpu() for k, v in nanovla_to_hf(decoder.state_dict(), cfg).items()}

    def write(tmp: str) -> None:
        with open(os.path.join(tmp, "config.json"), "w") as f:
            json.dump(config, f, indent=2)
        save_file(state, os.path.join(tmp, "model.safetensors"), metadata={"format": "pt"})
        tokenizer.save(os.path.join(tmp, "tokenizer.json"))

    atomic_directory_write(path, write)
