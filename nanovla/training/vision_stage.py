"""Stage 0 ("vision"): the encoder learns to see the scenes before any language is involved.

No pretrained YOLOv9 weights can be downloaded here, and a from-scratch encoder learns colour
and kind far too slowly from the language loss alone (one caption gives one weak signal per
image). So, as a detector would be trained, the encoder first learns from the scene graph's
boxes: on every neck level (strides 8/16/32) a linear 1x1 head classifies each cell as "no
object" or the kind of the object covering it, and a second one its colour. Kind and colour are
separate heads, so a held-out (colour, kind) pair is just a new combination of two things the
encoder already tells apart. The heads are linear on purpose: whatever they read must be in the
features the projector pools.

The heads are thrown away after the stage; the checkpoint holds the whole model (encoder
trained, projector and decoder untouched) and the next stage (text) starts from it. The
encoder is then frozen (BatchNorm statistics included) or fine-tuned (`train_vision`).

Targets: cells whose centre lies inside an object's box take its labels; objects are painted
back to front so the nearer one owns a shared cell; an object smaller than a cell still owns
the cell under its box centre.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from safetensors.torch import load_file, save_file

from ..model.checkpoint import atomic_directory_write, load_checkpoint, save_checkpoint
from ..data.scenes import COLOR_NAMES, HEIGHT, KINDS, WIDTH, Scene, generate
from ..runtime.preprocess import resize_uint8
from .common import Progress, adam_state_tensors, load_adam_state_tensors, lr_factor

NONE_WEIGHT = 0.2  # most cells are empty table: down-weight the "no object" class


class SceneHeads(nn.Module):
    """One linear 1x1 conv per neck level -> (kind logits 1+K, colour logits 1+C) per cell."""

    def __init__(self, channels: list[int]):
        super().__init__()
        self.n_kind, self.n_color = 1 + len(KINDS), 1 + len(COLOR_NAMES)
        self.heads = nn.ModuleList(nn.Conv2d(c, self.n_kind + self.n_color, 1) for c in channels)

    def forward(self, feats: list[torch.Tensor]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        out = []
        for head, f in zip(self.heads, feats):
            y = head(f)
            out.append((y[:, : self.n_kind], y[:, self.n_kind:]))
        return out


def dense_targets(scene: Scene, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """(kind, colour) label grids (h, w), 0 = no object, for a scene in its own pixel frame."""
    kind = np.zeros((h, w), np.int64)
    color = np.zeros((h, w), np.int64)
    sw, sh = getattr(scene, "width", WIDTH), getattr(scene, "height", HEIGHT)
    cy = (np.arange(h) + 0.5) * sh / h
    cx = (np.arange(w) + 0.5) * sw / w
    for o in sorted(scene.objects, key=lambda o: o.y):  # back to front: the nearer object wins
        x0, y0, x1, y1 = o.bbox
        rows = (cy >= y0) & (cy <= y1)
        cols = (cx >= x0) & (cx <= x1)
        cells = rows[:, None] & cols[None, :]
        if not cells.any():
            r = min(h - 1, max(0, int(0.5 * (y0 + y1) / sh * h)))
            c = min(w - 1, max(0, int(0.5 * (x0 + x1) / sw * w)))
            cells = np.zeros((h, w), bool)
            cells[r, c] = True
        kind[cells] = KINDS.index(o.kind) + 1
        color[cells] = COLOR_NAMES.index(o.color) + 1
    return kind, color


def batch_targets(scenes: list[Scene], sizes: list[tuple[int, int]]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    out = []
    for h, w in sizes:
        pairs = [dense_targets(s, h, w) for s in scenes]
        out.append((torch.from_numpy(np.stack([p[0] for p in pairs])),
                    torch.from_numpy(np.stack([p[1] for p in pairs]))))
    return out


def dense_loss(outputs, targets) -> tuple[torch.Tensor, dict]:
    """Mean over levels of kind CE + colour CE; and accuracies on object cells (for the log)."""
    total = 0.0
    stats = {"kind_acc": 0.0, "color_acc": 0.0, "none_acc": 0.0}
    for (kind_logits, color_logits), (kind_t, color_t) in zip(outputs, targets):
        for logits, t, name in ((kind_logits, kind_t, "kind"), (color_logits, color_t, "color")):
            weight = torch.ones(logits.shape[1], device=logits.device)
            weight[0] = NONE_WEIGHT
            total = total + F.cross_entropy(logits.float(), t, weight=weight)
            with torch.no_grad():
                pred = logits.argmax(1)
                obj = t > 0
                stats[f"{name}_acc"] += float((pred[obj] == t[obj]).float().mean()) if obj.any() else 0.0
                if name == "kind":
                    stats["none_acc"] += float((pred[~obj] == 0).float().mean()) if (~obj).any() else 0.0
    n = len(outputs)
    return total / n, {k: v / n for k, v in stats.items()}


def to_pixels(images: np.ndarray) -> torch.Tensor:
    """(B, H, W, 3) uint8 -> (B, 3, H, W) float in 0..1."""
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div(255.0)


@torch.no_grad()
def evaluate_dense(model, heads: SceneHeads, split: str, seed: int, count: int, device, batch: int = 32) -> dict:
    """Accuracies of the heads on `count` freshly generated scenes of `split` (never trained on)."""

    v = model.cfg.vision
    model.vision.eval()
    sums = {"kind_acc": 0.0, "color_acc": 0.0, "none_acc": 0.0}
    n = 0
    for start in range(0, count, batch):
        images, scenes = [], []
        for i in range(start, min(count, start + batch)):
            image, scene = generate(split, seed, i)
            images.append(resize_uint8(image, v.image_height, v.image_width))
            scenes.append(scene)
        feats = model.neck_features(to_pixels(np.stack(images)).to(device))
        _, stats = dense_loss(heads(feats), [(k.to(device), c.to(device)) for k, c in
                                             batch_targets(scenes, model.feature_sizes)])
        for k in sums:
            sums[k] += stats[k] * len(scenes)
        n += len(scenes)
    return {k: round(v / max(n, 1), 4) for k, v in sums.items()} | {"scenes": n}


@torch.no_grad()
def recalibrate_batchnorm(model, data, rng: np.random.Generator, device, batches: int = 30, batch_size: int = 32) -> None:
    """Replace BatchNorm running statistics by exact averages over `batches` training batches.

    ultralytics' BatchNorm momentum is 0.03, so after a short run the running statistics still
    remember the random start and the frozen (eval-mode) encoder would see other features than
    the trained one did."""
    bns = [m for m in model.vision.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average
    model.vision.train()
    for _ in range(batches):
        idx = np.sort(rng.choice(len(data), size=min(batch_size, len(data)), replace=False))
        model.neck_features(to_pixels(data.images[idx]).to(device))
    for m, momentum in zip(bns, momenta):
        m.momentum = momentum
    model.vision.eval()


def train_vision_stage(cfg, model, tokenizer, data, device, log) -> dict:
    """Train the encoder with the dense heads; returns the stage's metrics (written by the caller)."""
    if data is None:
        raise ValueError("stage vision needs tabletop scenes with boxes (no `sources` data sets)")
    model.to(device)
    for p in model.parameters():
        p.requires_grad_(False)
    for p in model.vision.parameters():
        p.requires_grad_(True)
    heads = SceneHeads(model.vision.channels).to(device)
    named = [(f"vision.{n}", p) for n, p in model.vision.named_parameters()] + \
            [(f"heads.{n}", p) for n, p in heads.named_parameters()]
    lr = cfg.vision_lr
    opt = torch.optim.AdamW([
        {"params": [p for _, p in named if p.ndim >= 2], "weight_decay": cfg.weight_decay, "base_lr": lr},
        {"params": [p for _, p in named if p.ndim < 2], "weight_decay": 0.0, "base_lr": lr},
    ], lr=lr, betas=(0.9, 0.95))
    resume_dir = cfg.out.rstrip("/") + ".resume"
    start = 0
    rng = np.random.default_rng(cfg.seed)
    if os.path.isfile(os.path.join(resume_dir, "state.json")):
        resumed, _, _ = load_checkpoint(os.path.join(resume_dir, "model"))
        model.load_state_dict(resumed.state_dict())
        heads.load_state_dict(load_file(os.path.join(resume_dir, "heads.safetensors")))
        load_adam_state_tensors(opt, load_file(os.path.join(resume_dir, "optimizer.safetensors")), dict(named))
        with open(os.path.join(resume_dir, "state.json")) as f:
            saved = json.load(f)
        start = int(saved["step"])
        rng.bit_generator.state = saved["rng"]
        log(f"resumed vision from {resume_dir} at step {start}")
    n_train = sum(p.numel() for _, p in named)
    log(f"stage vision: training {n_train / 1e6:.2f}M parameters (encoder + dense kind/colour heads) on {device}")

    def save_resume(step: int) -> None:
        def write(tmp: str) -> None:
            save_checkpoint(os.path.join(tmp, "model"), model, tokenizer)
            save_file({k: v.detach().cpu().contiguous() for k, v in heads.state_dict().items()},
                      os.path.join(tmp, "heads.safetensors"))
            save_file(adam_state_tensors(opt, {id(p): name for name, p in named}),
                      os.path.join(tmp, "optimizer.safetensors"))
            with open(os.path.join(tmp, "state.json"), "w") as f:
                json.dump({"step": step, "rng": rng.bit_generator.state, "config": dataclasses.asdict(cfg)}, f)
        atomic_directory_write(resume_dir, write)

    sizes = model.feature_sizes
    model.vision.train()
    heads.train()
    progress = Progress(cfg.steps, "vision", start, unit="img")
    loss_value, stats = float("nan"), {}
    for step in range(start, cfg.steps):
        for g in opt.param_groups:
            g["lr"] = g["base_lr"] * lr_factor(step, cfg)
        idx = np.sort(rng.choice(len(data), size=cfg.batch_size, replace=False))
        pixels = to_pixels(data.images[idx])
        targets = batch_targets([data.scenes[i] for i in idx], sizes)
        if rng.random() < 0.5:  # a mirrored scene is still a scene: flip image and targets together
            pixels = pixels.flip(3)
            targets = [(k.flip(2), c.flip(2)) for k, c in targets]
        feats = model.neck_features(pixels.to(device))
        loss, stats = dense_loss(heads(feats), [(k.to(device), c.to(device)) for k, c in targets])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_([p for _, p in named], cfg.grad_clip)
        opt.step()
        loss_value = float(loss.detach())
        if not math.isfinite(loss_value):
            raise FloatingPointError(f"loss is {loss_value} at step {step}; lower vision_lr")
        if step % cfg.log_every == 0 or step == cfg.steps - 1:
            progress.update(step, loss_value, cfg.batch_size * (cfg.log_every if step else 1))
            if step % (cfg.log_every * 10) == 0 or step == cfg.steps - 1:
                log(f"  cells: kind acc {stats['kind_acc']:.3f}, colour acc {stats['color_acc']:.3f}, "
                    f"empty acc {stats['none_acc']:.3f}")
        if cfg.save_every and (step + 1) % cfg.save_every == 0 and step + 1 < cfg.steps:
            save_resume(step + 1)
    progress.close()
    recalibrate_batchnorm(model, data, rng, device)
    metrics = {"stage": "vision", "steps": cfg.steps, "final_loss": loss_value, "train_cells": stats,
               "train_config": dataclasses.asdict(cfg)}
    if cfg.eval_scenes:
        t0 = time.perf_counter()
        metrics["eval_cells"] = evaluate_dense(model, heads, "eval", cfg.eval_seed, cfg.eval_scenes, device)
        log(f"eval cells ({cfg.eval_scenes} scenes, {time.perf_counter() - t0:.0f} s): {metrics['eval_cells']}")
    if cfg.heldout_scenes:
        metrics["heldout_cells"] = evaluate_dense(model, heads, "heldout", cfg.eval_seed, cfg.heldout_scenes, device)
        log(f"heldout cells ({cfg.heldout_scenes} scenes): {metrics['heldout_cells']}")
    model.eval()
    save_checkpoint(cfg.out, model, tokenizer, metrics)
    shutil.rmtree(resume_dir, ignore_errors=True)
    log(f"wrote {cfg.out}")
    return metrics
