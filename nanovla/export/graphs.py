"""The three exported graphs, as torch modules written for ONNX/TensorRT, and their export.

    vision   pixels (B, 3, H, W) float 0..1            -> image_tokens (B, N, C)   (projector included)
    prefill  input_ids (B, T) int32, image_tokens       -> logits (B, V), new_key.i / new_value.i (B, Hkv, T, D)
    decode   input_ids (B, 1) int32, past_length (1,) int32,
             past_key.i / past_value.i (B, Hkv, L, D)    -> logits (B, V), new_key.i / new_value.i (B, Hkv, 1, D)

The prefill graph builds the image context (the prefix `<|bos|><|user_start|><|image|>*N`) from
nothing. The decode graph reads a *preallocated* cache of capacity L (positions >= past_length
are masked out) and returns only the new position's key/value; the runtime writes it into its
buffer. So a decode step never concatenates or copies the whole cache, inside the graph or out.
The question's tokens go through the decode graph one at a time, like generated ones.

The attention is re-written here rather than traced from `model/decoder.py` because the eager code picks
`is_causal` / mask by Python branches on T and on `past`, which tracing would freeze. It uses
the model's own weights (the decode graph fuses some of them, see DecodeGraph), and the tests
hold both graphs to the eager model within a stated tolerance. Design choices for TensorRT: token
ids and positions are int32; image tokens are written over the `<|image|>` positions with a
float one-hot MatMul (no NonZero/ScatterND, no int64 index tensors); CumSum runs on floats.
"""

from __future__ import annotations

import io
import math
import warnings

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..model.decoder import rotate_half
from ..model.vlm import VisionLanguageModel

OPSET = 17
MASKED = -30000.0  # additive mask value: exp() of it is 0, and it is representable in fp16


def kv_names(n_layer: int, prefix: str) -> list[str]:
    return [f"{prefix}_{kind}.{i}" for i in range(n_layer) for kind in ("key", "value")]


class VisionGraph(nn.Module):
    def __init__(self, model: VisionLanguageModel):
        super().__init__()
        self.model = model

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(pixels)  # normalisation + encoder + projector


def _attention(attn, x, cos, sin, causal_bias):
    """x (B, T, C), causal_bias (g*T, T) -> (out (B, T, C), k, v (B, Hkv, T, D)). Query heads are
    grouped by their key/value head, (B, Hkv, g*T, D), so GQA needs no repeat of k and v."""
    B, T, _ = x.shape
    H, Hkv, D = attn.n_head, attn.n_kv_head, attn.head_dim
    g = H // Hkv
    q = attn.q_proj(x).view(B, T, H, D).transpose(1, 2)  # (B, H, T, D)
    k = attn.k_proj(x).view(B, T, Hkv, D).transpose(1, 2)  # (B, Hkv, T, D)
    v = attn.v_proj(x).view(B, T, Hkv, D).transpose(1, 2)
    q = q * cos + rotate_half(q) * sin
    k = k * cos + rotate_half(k) * sin
    q = q.reshape(B, Hkv, g * T, D) * (1.0 / math.sqrt(D))  # query head h reads kv head h // g
    y = torch.softmax(q @ k.transpose(-1, -2) + causal_bias, dim=-1) @ v
    y = y.reshape(B, H, T, D).transpose(1, 2).reshape(B, T, H * D)
    return attn.o_proj(y), k, v


class PrefillGraph(nn.Module):
    """A fresh sequence (no cache): ids with `<|image|>` placeholders + the image tokens."""

    def __init__(self, model: VisionLanguageModel):
        super().__init__()
        self.decoder = model.decoder
        self.image_token_id = model.image_token_id
        self.groups = model.cfg.decoder.n_head // model.cfg.decoder.n_kv_head

    def forward(self, input_ids: torch.Tensor, image_tokens: torch.Tensor):
        d = self.decoder
        x = d.embed_tokens(input_ids)  # (B, T, C)
        image_id = torch.full((1,), self.image_token_id, dtype=input_ids.dtype)  # int32: no int64 cast of the ids
        is_image = (input_ids == image_id).to(x.dtype)  # (B, T)
        slot = torch.cumsum(is_image, dim=1) - 1.0  # k-th placeholder takes image token k
        n = torch.arange(image_tokens.shape[1], device=x.device).to(x.dtype)
        one_hot = (slot[..., None] == n).to(x.dtype) * is_image[..., None]  # (B, T, N)
        x = x * (1.0 - is_image[..., None]) + one_hot @ image_tokens.to(x.dtype)
        T = input_ids.shape[1]
        positions = torch.arange(T, device=x.device, dtype=torch.int32)
        cos = d.rope_cos[positions][None, None].to(x.dtype)  # (1, 1, T, D)
        sin = d.rope_sin[positions][None, None].to(x.dtype)
        i = torch.arange(T, device=x.device)
        causal_bias = torch.where(i[None, :] <= i[:, None], 0.0, MASKED).repeat(self.groups, 1)  # (g*T, T)
        news = []
        for layer in d.layers:
            a, k, v = _attention(layer.self_attn, layer.input_layernorm(x), cos, sin, causal_bias)
            x = x + a
            x = x + layer.mlp(layer.post_attention_layernorm(x))
            news += [k, v]
        logits = d.lm_head(d.norm(x[:, -1]))  # (B, V): only the last position is ever sampled
        return (logits, *news)


def rotate_half_matrix(head_dim: int, heads: int) -> torch.Tensor:
    """R with x @ R == rotate_half(x) for each head of a (..., heads * head_dim) row."""
    half = head_dim // 2
    r = torch.zeros(head_dim, head_dim)
    r[torch.arange(half) + half, torch.arange(half)] = -1.0  # out[j] = -x[j + D/2]
    r[torch.arange(half), torch.arange(half) + half] = 1.0  # out[j + D/2] = x[j]
    return torch.block_diag(*[r] * heads)


class DecodeGraph(nn.Module):
    """One new token after a cache of capacity L holding `past_length` valid positions.

    Written for a small op count per step (onnxruntime's per-node overhead, not arithmetic, is
    the cost of a 6-layer decoder at batch 1): T = 1 is static, so every reshape has a constant
    shape (batch is -1) and no transposes are needed; q, rotate_half(q), k, rotate_half(k) and v
    come from ONE fused MatMul (RoPE's rotate_half and 1/sqrt(D) folded into the weights), gate
    and up from another; the new token's own key enters the softmax as the last column."""

    def __init__(self, model: VisionLanguageModel):
        super().__init__()
        cfg = model.cfg.decoder
        d = model.decoder
        self.decoder = d
        H, Hkv, D = cfg.n_head, cfg.n_kv_head, cfg.n_embd // cfg.n_head
        self.H, self.Hkv, self.D, self.hidden = H, Hkv, D, cfg.mlp_hidden
        rq, rk = rotate_half_matrix(D, H), rotate_half_matrix(D, Hkv)
        scale = 1.0 / math.sqrt(D)
        self.qkv, self.gate_up = nn.ModuleList(), nn.ModuleList()
        with torch.no_grad():
            for layer in d.layers:
                a = layer.self_attn
                wq, wk, wv = a.q_proj.weight.t(), a.k_proj.weight.t(), a.v_proj.weight.t()  # (C, out)
                fused = nn.Linear(cfg.n_embd, 2 * H * D + 3 * Hkv * D, bias=cfg.attention_bias)
                fused.weight.copy_(torch.cat([wq * scale, (wq @ rq) * scale, wk, wk @ rk, wv], dim=1).t())
                if cfg.attention_bias:
                    bq, bk, bv = a.q_proj.bias, a.k_proj.bias, a.v_proj.bias
                    fused.bias.copy_(torch.cat([bq * scale, (bq @ rq) * scale, bk, bk @ rk, bv]))
                self.qkv.append(fused)
                m = layer.mlp
                gu = nn.Linear(cfg.n_embd, 2 * cfg.mlp_hidden, bias=False)
                gu.weight.copy_(torch.cat([m.gate_proj.weight, m.up_proj.weight], dim=0))
                self.gate_up.append(gu)

    def forward(self, input_ids: torch.Tensor, past_length: torch.Tensor, *past: torch.Tensor):
        d, H, Hkv, D = self.decoder, self.H, self.Hkv, self.D
        g = H // Hkv
        x = d.embed_tokens(input_ids)  # (B, 1, C)
        cos, sin = d.rope_cos[past_length], d.rope_sin[past_length]  # (1, D) at this position
        cos_q, sin_q = cos.repeat(1, H), sin.repeat(1, H)  # (1, H*D)
        cos_k, sin_k = cos.repeat(1, Hkv), sin.repeat(1, Hkv)
        L = past[0].shape[2]
        key_positions = torch.arange(L, device=x.device, dtype=torch.int32)
        past_bias = torch.where(key_positions < past_length, 0.0, MASKED).view(1, 1, 1, -1)  # (1, 1, 1, L)
        news = []
        for i, layer in enumerate(d.layers):
            past_k, past_v = past[2 * i], past[2 * i + 1]  # (B, Hkv, L, D)
            q, q_rot, k, k_rot, v = self.qkv[i](layer.input_layernorm(x)).split(
                [H * D, H * D, Hkv * D, Hkv * D, Hkv * D], dim=-1)
            q = (q * cos_q + q_rot * sin_q).reshape(-1, Hkv, g, D)  # (B, Hkv, g, D): head h reads kv h // g
            k = (k * cos_k + k_rot * sin_k).reshape(-1, Hkv, 1, D)
            v = v.reshape(-1, Hkv, 1, D)
            scores = torch.cat([q @ past_k.transpose(-1, -2) + past_bias, q @ k.transpose(-1, -2)], dim=-1)
            probs = torch.softmax(scores, dim=-1)  # (B, Hkv, g, L + 1)
            y = probs[..., :-1] @ past_v + probs[..., -1:] * v  # (B, Hkv, g, D)
            x = x + layer.self_attn.o_proj(y.reshape(-1, 1, H * D))
            gate, up = self.gate_up[i](layer.post_attention_layernorm(x)).split([self.hidden, self.hidden], dim=-1)
            x = x + layer.mlp.down_proj(F.silu(gate) * up)
            news += [k, v]
        logits = d.lm_head(d.norm(x.reshape(-1, x.shape[-1])))  # (B, V)
        return (logits, *news)


# ----------------------------------------------------------------------------- export

def graph_io(model: VisionLanguageModel) -> dict[str, dict]:
    """Names, shapes (symbolic dims as strings) and dtypes of every graph input and output."""
    cfg = model.cfg
    d = cfg.decoder
    H, W, N, C = cfg.vision.image_height, cfg.vision.image_width, cfg.image_tokens, d.n_embd
    kv_shape = lambda seq: ["batch", d.n_kv_head, seq, d.n_embd // d.n_head]  # noqa: E731
    new_kv = [{"name": n, "shape": kv_shape("sequence"), "dtype": "float32"} for n in kv_names(d.n_layer, "new")]
    step_kv = [{"name": n, "shape": kv_shape(1), "dtype": "float32"} for n in kv_names(d.n_layer, "new")]
    logits = {"name": "logits", "shape": ["batch", d.vocab_size], "dtype": "float32"}
    return {
        "vision": {
            "inputs": [{"name": "pixels", "shape": ["batch", 3, H, W], "dtype": "float32"}],
            "outputs": [{"name": "image_tokens", "shape": ["batch", N, C], "dtype": "float32"}],
        },
        "prefill": {
            "inputs": [{"name": "input_ids", "shape": ["batch", "sequence"], "dtype": "int32"},
                       {"name": "image_tokens", "shape": ["batch", N, C], "dtype": "float32"}],
            "outputs": [logits] + new_kv,
        },
        "decode": {
            "inputs": [{"name": "input_ids", "shape": ["batch", 1], "dtype": "int32"},
                       {"name": "past_length", "shape": [1], "dtype": "int32"}]
                      + [{"name": n, "shape": kv_shape("past_sequence"), "dtype": "float32"}
                         for n in kv_names(d.n_layer, "past")],
            "outputs": [logits] + step_kv,
        },
    }


def example_inputs(model: VisionLanguageModel, graph: str) -> tuple:
    cfg = model.cfg
    d = cfg.decoder
    if graph == "vision":
        return (torch.rand(1, 3, cfg.vision.image_height, cfg.vision.image_width),)
    if graph == "prefill":
        ids = [1, 2] + [model.image_token_id] * cfg.image_tokens + [7, 8]
        return torch.tensor([ids], dtype=torch.int32), torch.randn(1, cfg.image_tokens, d.n_embd)
    L = cfg.image_tokens + 7  # a size distinct from every static dim, so tracing keeps it symbolic
    kv = [torch.randn(1, d.n_kv_head, L, d.n_embd // d.n_head) for _ in range(2 * d.n_layer)]
    return (torch.tensor([[5]], dtype=torch.int32), torch.tensor([L - 3], dtype=torch.int32), *kv)


def export_graph(model: VisionLanguageModel, graph: str, path: str, metadata: dict[str, str]) -> None:
    """Export one graph to `path` (opset 17, dynamic batch/sequence dims, metadata inside)."""
    import onnx

    module = {"vision": VisionGraph, "prefill": PrefillGraph, "decode": DecodeGraph}[graph](model).eval()
    io_spec = graph_io(model)[graph]
    names_in = [t["name"] for t in io_spec["inputs"]]
    names_out = [t["name"] for t in io_spec["outputs"]]
    dynamic = {t["name"]: {i: s for i, s in enumerate(t["shape"]) if isinstance(s, str)}
               for t in io_spec["inputs"] + io_spec["outputs"]}
    buffer = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        # the TorchScript exporter (dynamo=False) is used on purpose: it needs no onnxscript and
        # its dynamic_axes handling is mature; torch is pinned, so its deprecation cannot bite here
        warnings.simplefilter("ignore")
        torch.onnx.export(module, example_inputs(model, graph), buffer, dynamo=False, opset_version=OPSET,
                          input_names=names_in, output_names=names_out, dynamic_axes=dynamic,
                          do_constant_folding=True)
    proto = onnx.load_from_string(buffer.getvalue())
    declare_shapes(proto, io_spec)
    set_metadata(proto, {**metadata, "nanovla.graph": graph})
    onnx.save(proto, path)


def declare_shapes(proto, io_spec: dict) -> None:
    """Write the declared I/O shapes onto the graph: the tracer names some static output dims
    symbolically (e.g. 'Addimage_tokens_dim_1'); bundle.json and TensorRT want them exact."""
    declared = {t["name"]: t["shape"] for t in io_spec["inputs"] + io_spec["outputs"]}
    for value in list(proto.graph.input) + list(proto.graph.output):
        dims = value.type.tensor_type.shape.dim
        for dim, want in zip(dims, declared[value.name]):
            if isinstance(want, str):
                dim.dim_param = want
            else:
                dim.dim_value = want


def set_metadata(proto, metadata: dict[str, str]) -> None:
    existing = {p.key: p for p in proto.metadata_props}
    for key, value in metadata.items():
        if key in existing:
            existing[key].value = str(value)
        else:
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, str(value)


def check_graph(path: str) -> None:
    """onnx.checker (full) and strict shape inference; raises ValueError naming the file."""
    import onnx

    try:
        onnx.checker.check_model(path, full_check=True)
        model = onnx.load(path)
        onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True, data_prop=True)
    except Exception as e:  # onnx raises ValidationError / InferenceError
        raise ValueError(f"{path}: ONNX check failed: {str(e).splitlines()[0]}") from None
    if model.opset_import[0].version < OPSET:
        raise ValueError(f"{path}: opset {model.opset_import[0].version} < {OPSET}")
