"""Vision encoders: images in, a list of spatial feature grids out (never one pooled vector).

`YoloNeckEncoder` builds a YOLOv9 with ultralytics (from an architecture yaml, or from a local
`.pt` with its weights) and takes the neck outputs at strides 8/16/32 with forward hooks. The
detection head is never run: the forward pass stops after the last hooked layer.
"""

from __future__ import annotations

import os

import torch
import torch.nn as nn

from .config import VisionConfig


class VisionEncoder(nn.Module):
    """Interface: forward(pixels (B, 3, H, W) float, already normalised) -> list of (B, C_i, H_i, W_i)."""

    channels: list[int]  # C_i of each returned level
    strides: list[int]  # stride of each level w.r.t. the input


def _quiet_ultralytics() -> None:
    # no network, no settings chatter: set before ultralytics is imported
    os.environ.setdefault("YOLO_OFFLINE", "1")
    os.environ.setdefault("YOLO_VERBOSE", "False")


def build_yolo_detection_model(arch: str):
    """An ultralytics DetectionModel from a yaml name (fresh) or a local .pt (its trained weights)."""
    _quiet_ultralytics()
    if arch.endswith(".pt"):
        if not os.path.isfile(arch):
            raise FileNotFoundError(f"{arch}: no such ultralytics checkpoint (nothing is downloaded)")
        from ultralytics.nn.tasks import load_checkpoint

        # ultralytics checkpoints are pickles by design; only load files you trust
        model, _ = load_checkpoint(arch, device="cpu")
        return model.float()
    from ultralytics.nn.tasks import DetectionModel

    return DetectionModel(arch, ch=3, nc=80, verbose=False)


class YoloNeckEncoder(VisionEncoder):
    def __init__(self, cfg: VisionConfig, detection_model=None):
        super().__init__()
        net = detection_model if detection_model is not None else build_yolo_detection_model(cfg.arch)
        last = max(cfg.layers)
        # keep only the layers up to the last hooked one; the Detect head is dropped
        self.layers = nn.ModuleList(list(net.model)[: last + 1])
        self.routes = [(m.f, m.i) for m in self.layers]
        self.save = set(net.save)
        self.hooked = tuple(cfg.layers)
        self._captured: dict[int, torch.Tensor] = {}
        for i in self.hooked:
            self.layers[i].register_forward_hook(self._make_hook(i))
        self.strides = list(cfg.strides)
        with torch.no_grad():
            was_training = self.training
            self.eval()
            feats = self.forward(torch.zeros(1, 3, cfg.image_height, cfg.image_width))
            self.train(was_training)
        self.channels = [f.shape[1] for f in feats]
        for f, s in zip(feats, self.strides):
            if (f.shape[2] * s, f.shape[3] * s) != (cfg.image_height, cfg.image_width):
                raise ValueError(f"layer output {tuple(f.shape[2:])} does not match stride {s} "
                                 f"for input {cfg.image_height}x{cfg.image_width}")

    def _make_hook(self, index: int):
        def hook(_module, _inputs, output):
            self._captured[index] = output
        return hook

    def forward(self, pixels: torch.Tensor) -> list[torch.Tensor]:
        self._captured = {}
        y: list[torch.Tensor | None] = []
        x = pixels
        for m, (f, i) in zip(self.layers, self.routes):
            if f != -1:  # this layer reads earlier outputs (ultralytics routing)
                x = y[f] if isinstance(f, int) else [x if j == -1 else y[j] for j in f]
            x = m(x)
            y.append(x if i in self.save else None)
        feats = [self._captured[i] for i in self.hooked]
        self._captured = {}
        return feats
