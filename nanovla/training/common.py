"""What every training stage shares: the device and process group, which parameters train, the
optimizer and its learning-rate schedule, optimizer state as safetensors, the resume directory,
the progress line and the end-of-stage evaluation.

`nanovla.training.train` (text/align/sft), `nanovla.training.vision_stage`, `nanovla.training.rl` and `nanovla.training.scale` import
from here; nothing here imports a stage.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import time

import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file

from ..model.checkpoint import atomic_directory_write, save_checkpoint
from ..evaluation.scenes import evaluate, generated_rows
from ..runtime.torch_backend import TorchRuntime
from ..model.tokenizer import Tokenizer
from .config import TrainConfig
from ..model.vlm import VisionLanguageModel


def autocast_for(cfg: TrainConfig, device: torch.device):
    """CUDA: autocast to cfg.dtype (bf16 by default); CPU: float32."""
    if device.type == "cuda" and cfg.dtype != "float32":
        return torch.autocast("cuda", dtype=getattr(torch, cfg.dtype))
    return torch.autocast("cpu", enabled=False)


def setup_distributed(device: str) -> tuple[int, int, torch.device]:
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if world > 1:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if device == "cuda":
            torch.cuda.set_device(local)
        dist.init_process_group("nccl" if device == "cuda" else "gloo")
        return rank, world, torch.device(f"cuda:{local}" if device == "cuda" else "cpu")
    return 0, 1, torch.device(device)


def set_trainable(model: VisionLanguageModel, cfg: TrainConfig) -> dict[str, list]:
    """Freeze everything, then unfreeze what the stage trains; returns optimizer param groups."""
    for p in model.parameters():
        p.requires_grad_(False)
    decoder = model.decoder
    groups: dict[str, list] = {"decoder": [], "projector": [], "vision": []}
    if cfg.stage == "text":
        groups["decoder"] = list(decoder.parameters())
    else:
        groups["projector"] = list(model.projector.parameters())
        k = cfg.train_last_k
        if k < 0:
            groups["decoder"] = list(decoder.parameters())
        elif k > 0:
            for layer in decoder.layers[-k:]:
                groups["decoder"] += list(layer.parameters())
            groups["decoder"] += list(decoder.norm.parameters())
    if cfg.train_vision and cfg.stage != "text":
        groups["vision"] = list(model.vision.parameters())
    for ps in groups.values():
        for p in ps:
            p.requires_grad_(True)
    return groups


def build_optimizer(groups: dict[str, list], cfg: TrainConfig) -> torch.optim.Optimizer:
    param_groups = []
    for name, params in groups.items():
        if not params:
            continue
        lr = {"vision": cfg.vision_lr, "projector": cfg.projector_lr or cfg.lr, "decoder": cfg.decoder_lr or cfg.lr}[name]
        decay = [p for p in params if p.ndim >= 2]
        no_decay = [p for p in params if p.ndim < 2]
        param_groups.append({"params": decay, "lr": lr, "base_lr": lr, "weight_decay": cfg.weight_decay})
        param_groups.append({"params": no_decay, "lr": lr, "base_lr": lr, "weight_decay": 0.0})
    return torch.optim.AdamW(param_groups, betas=(0.9, 0.95), eps=1e-8)


def lr_factor(step: int, cfg: TrainConfig) -> float:
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def adam_state_tensors(opt: torch.optim.Optimizer, names: dict[int, str]) -> dict[str, torch.Tensor]:
    """AdamW moments and step of every parameter with state, keyed `<name>::<field>` (safetensors)."""
    tensors = {}
    for group in opt.param_groups:
        for p in group["params"]:
            state = opt.state.get(p)
            if state:
                for key in ("exp_avg", "exp_avg_sq"):
                    tensors[f"{names[id(p)]}::{key}"] = state[key].detach().cpu().contiguous()
                tensors[f"{names[id(p)]}::step"] = torch.as_tensor(state["step"]).reshape(1).float()
    return tensors


def load_adam_state_tensors(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor],
                            params: dict[str, torch.nn.Parameter]) -> None:
    """The inverse of `adam_state_tensors`: `params` maps the names back to parameters."""
    for key, value in tensors.items():
        name, field_name = key.split("::")
        p = params[name]
        state = opt.state.setdefault(p, {})
        if field_name == "step":
            state["step"] = torch.tensor(float(value.item()))
        else:
            state[field_name] = value.to(p.device)


def save_resume_state(path: str, model: VisionLanguageModel, tokenizer: Tokenizer, opt: torch.optim.Optimizer,
                      step: int, cfg: TrainConfig, data_state: dict | None = None,
                      optimizer_tensors: dict[str, torch.Tensor] | None = None) -> None:
    """Weights + optimizer moments (safetensors) + step + data position, so a killed run continues
    exactly there. `optimizer_tensors` replaces reading `opt` (FSDP gathers them beforehand)."""
    names = {id(p): n for n, p in model.named_parameters()}

    def write(tmp: str) -> None:
        save_checkpoint(os.path.join(tmp, "model"), model, tokenizer)
        tensors = optimizer_tensors if optimizer_tensors is not None else adam_state_tensors(opt, names)
        save_file(tensors, os.path.join(tmp, "optimizer.safetensors"))
        with open(os.path.join(tmp, "state.json"), "w") as f:
            json.dump({"step": step, "config": dataclasses.asdict(cfg), "data": data_state}, f, indent=2)

    atomic_directory_write(path, write)


def load_resume_state(path: str, model: VisionLanguageModel, opt: torch.optim.Optimizer) -> int:
    load_adam_state_tensors(opt, load_file(os.path.join(path, "optimizer.safetensors")), dict(model.named_parameters()))
    with open(os.path.join(path, "state.json")) as f:
        return int(json.load(f)["step"])


class Progress:
    """One line, rewritten in place on a terminal and printed every log_every steps elsewhere."""

    def __init__(self, total: int, stage: str, start: int, unit: str = "tok"):
        self.total, self.stage, self.start, self.unit = total, stage, start, unit
        self.t0 = time.perf_counter()
        self.tokens = 0
        self.tty = sys.stderr.isatty()

    def update(self, step: int, loss: float, tokens: int, flops: float = 0.0, peak_flops: float = 0.0,
               extra: str = "") -> None:
        self.tokens += tokens
        self.flops = getattr(self, "flops", 0.0) + flops
        elapsed = time.perf_counter() - self.t0
        done = step + 1 - self.start
        rate = self.tokens / max(elapsed, 1e-9)
        eta = (self.total - step - 1) * elapsed / max(done, 1)
        width = 24
        filled = int(width * (step + 1) / self.total)
        line = (f"[{self.stage}] {'#' * filled}{'.' * (width - filled)} {step + 1}/{self.total} loss {loss:.4f} "
                f"{extra + ' ' if extra else ''}{rate:,.0f} {self.unit}/s{self._mfu(elapsed, peak_flops)} "
                f"elapsed {elapsed / 60:.1f}m eta {eta / 60:.1f}m")
        print(("\r" + line) if self.tty else line, end="" if self.tty else "\n", file=sys.stderr, flush=True)

    def _mfu(self, elapsed: float, peak_flops: float) -> str:
        if not peak_flops or not self.flops:
            return ""
        return f" MFU {100 * self.flops / max(elapsed, 1e-9) / peak_flops:.1f}%"

    def close(self) -> None:
        if self.tty:
            print(file=sys.stderr)


def evaluate_model(model, tokenizer, cfg: TrainConfig, device, log) -> dict:
    runtime = TorchRuntime.from_model(model.float(), tokenizer, device=str(device))
    out = {}
    if cfg.eval_scenes:
        out["eval"] = evaluate(runtime, generated_rows("eval", cfg.eval_seed, cfg.eval_scenes))
        out["eval"].pop("wrong_examples")
        log(f"eval ({cfg.eval_scenes} scenes): exact match {out['eval']['exact_match']:.3f}, "
            f"caption F1 {out['eval']['caption']['f1']:.3f}")
    if cfg.heldout_scenes:
        out["heldout"] = evaluate(runtime, generated_rows("heldout", cfg.eval_seed, cfg.heldout_scenes))
        out["heldout"].pop("wrong_examples")
        log(f"heldout ({cfg.heldout_scenes} scenes): exact match {out['heldout']['exact_match']:.3f}, "
            f"caption F1 {out['heldout']['caption']['f1']:.3f}")
    return out
