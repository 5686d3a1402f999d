"""Scale-out pieces of the training loop: DDP / FSDP2 wrapping, gathering full (unsharded)
weights and optimizer state for rank 0's atomic checkpoint, and the FLOPs estimate behind MFU.

FSDP shards each decoder block as its own unit and the rest of the model (vision, projector,
embeddings) as the root; parameters that do not train may share a unit with ones that do.
Resume files stay what they are without FSDP (full tensors in safetensors): rank 0 writes them
from gathered state and every rank scatters them back on resume.
"""

from __future__ import annotations

import os

import torch

from ..model.config import ModelConfig
from .config import TrainConfig
from ..model.vlm import VisionLanguageModel


PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "L4": 121.0, "A10": 125.0,
               "4090": 165.0, "3090": 71.0}  # dense bf16 tensor-core peaks (SXM where there are two)


def peak_flops(cfg: TrainConfig, device: torch.device) -> float:
    if cfg.peak_tflops:
        return cfg.peak_tflops * 1e12
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, tflops in PEAK_TFLOPS.items():
            if key in name:
                return tflops * 1e12
    return 0.0


class FlopsModel:
    """Training FLOPs of one step, for MFU (the usual estimate, not a count):

    decoder: 2 x non-embedding parameters + causal attention (2 x n_layer x T x n_embd) per token
    forward; backward once more for activation gradients (the projector sits below the decoder, so
    they flow through every layer) plus once more for the weight gradients of the trained share.
    vision + projector: forward FLOPs of one image counted once with torch's FlopCounterMode; x3
    when the encoder trains (the projector's backward is small and counted as forward)."""

    def __init__(self, model: VisionLanguageModel, trainable: set[int]):
        d = model.decoder
        self.cfg = d.cfg
        params = [p for n, p in d.named_parameters() if not n.startswith("embed_tokens")]
        if d.cfg.tie_embeddings:
            params.append(d.lm_head.weight)
        self.decoder_params = sum(p.numel() for p in params)
        trained = sum(p.numel() for p in params if id(p) in trainable)
        self.decoder_factor = 2.0 + trained / max(1, self.decoder_params)  # forward=1, backward=1+share
        self.vision_trains = any(id(p) in trainable for p in model.vision.parameters())
        self.image_flops = 0.0
        modes = {m: m.training for m in model.modules()}
        model.eval()  # (!!) a counting pass in train mode would move BatchNorm statistics
        try:
            from torch.utils.flop_counter import FlopCounterMode

            v = model.cfg.vision
            with torch.no_grad(), FlopCounterMode(display=False) as counter:
                model.projector(model.vision(torch.zeros(1, 3, v.image_height, v.image_width,
                                                         device=next(model.parameters()).device)))
            self.image_flops = float(counter.get_total_flops())
        except Exception:  # an op the counter does not know: leave vision out of MFU
            self.image_flops = 0.0
        finally:
            for m, training in modes.items():
                m.training = training

    def step(self, tokens: int, row_len: int, images: int) -> float:
        per_token = 2 * self.decoder_params + 2 * self.cfg.n_layer * row_len * self.cfg.n_embd
        return (per_token * tokens * self.decoder_factor
                + self.image_flops * images * (3.0 if self.vision_trains else 1.0))


def wrap_distributed(model: VisionLanguageModel, cfg: TrainConfig, world: int, device: torch.device):
    """DDP (default) or FSDP2 (`fsdp`): each decoder block is its own shard unit, the rest the root."""
    if world == 1:
        return model
    if cfg.fsdp:
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        mp = None
        if device.type == "cuda" and cfg.dtype != "float32":
            mp = MixedPrecisionPolicy(param_dtype=getattr(torch, cfg.dtype), reduce_dtype=torch.float32)
        kwargs = {"mp_policy": mp} if mp else {}
        for layer in model.decoder.layers:
            fully_shard(layer, **kwargs)
        fully_shard(model, **kwargs)
        return model
    return torch.nn.parallel.DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=True)


def full_state(model: VisionLanguageModel, cfg: TrainConfig, world: int) -> dict[str, torch.Tensor] | None:
    """Under FSDP: the full (unsharded) weights on CPU; a collective, every rank must call it."""
    if not (cfg.fsdp and world > 1):
        return None
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def full_optimizer_tensors(model, opt, cfg: TrainConfig, world: int) -> dict[str, torch.Tensor] | None:
    if not (cfg.fsdp and world > 1):
        return None
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    full = get_optimizer_state_dict(model, opt, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    tensors = {}
    for name, state in full["state"].items():
        for key in ("exp_avg", "exp_avg_sq"):
            tensors[f"{name}::{key}"] = state[key].contiguous()
        tensors[f"{name}::step"] = torch.as_tensor(state["step"]).reshape(1).float()
    return tensors


def plain_copy(model_cfg: ModelConfig, image_token_id: int, state: dict[str, torch.Tensor]) -> VisionLanguageModel:
    """An unsharded CPU model holding `state` (rank 0 saves and evaluates it after FSDP)."""
    copy = VisionLanguageModel(model_cfg, image_token_id)
    copy.load_state_dict(state)
    return copy


def load_full_optimizer(model, opt, resume_dir: str) -> None:
    """FSDP resume: the saved full optimizer moments are scattered back to the shards."""
    from safetensors.torch import load_file
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict, \
        set_optimizer_state_dict

    tensors = load_file(os.path.join(resume_dir, "optimizer.safetensors"))  # every rank reads the full file
    # the fresh optimizer's layout (param_groups by parameter name) on every rank; its state is still empty,
    # so nothing is gathered (with cpu_offload only rank 0 would get it)
    full = get_optimizer_state_dict(model, opt, options=StateDictOptions(full_state_dict=True))
    state: dict = {}
    for key, value in tensors.items():
        name, field_name = key.split("::")
        state.setdefault(name, {})[field_name] = value.reshape(()) if field_name == "step" else value
    full["state"] = state
    set_optimizer_state_dict(model, opt, optim_state_dict=full,
                             options=StateDictOptions(full_state_dict=True))
