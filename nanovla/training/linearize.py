"""Stage "linearize": swap a trained model's MLP projector for a linear one fitted to it.

Why: a linear probe on the shipped model's image tokens reads colour and kind of objects in
held-out (colour, kind) pairs well before the projector (0.95 / 0.91 on the pooled encoder
features) and much worse after its GELU MLP (0.85 / 0.78), while objects of seen pairs read
~0.96 at both places. The MLP has learnt pair-specific features; a linear map cannot, since
what is a sum of a colour direction and a kind direction before it stays one after it.

How: the encoder and resampler stay as they are; on `fit_scenes` training scenes the linear
map (with bias) from the resampler's tokens (plus their position codes) to the MLP's outputs is
the ridge least-squares solution (float64 normal equations). Every other weight is copied, so
the new checkpoint answers almost as the old one did (the fit's R² is logged and written to
metrics.json) and a short SFT stage after it lets the decoder adapt.
"""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import torch

from ..model.checkpoint import save_checkpoint
from ..data.dataset import SceneSet
from ..model.tokenizer import Tokenizer
from ..model.vlm import VisionLanguageModel

RIDGE = 1e-3  # x the number of tokens: keeps the solve well conditioned, shrinks little


@torch.no_grad()
def projector_inputs_outputs(model: VisionLanguageModel, images: np.ndarray, batch: int = 100,
                             device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """(tokens, inputs) and (tokens, n_embd) float64: what the projector's MLP sees and returns."""
    p = model.projector
    xs, ys = [], []
    for s in range(0, len(images), batch):
        pixels = torch.from_numpy(np.ascontiguousarray(images[s:s + batch])).to(device)
        pixels = pixels.permute(0, 3, 1, 2).float() / 255
        x = p.mlp_inputs(model.neck_features(pixels))
        xs.append(x.reshape(-1, x.shape[-1]).double().cpu())
        ys.append(p.mlp(x).reshape(-1, model.cfg.decoder.n_embd).double().cpu())
    return torch.cat(xs), torch.cat(ys)


def fit_linear(x: torch.Tensor, y: torch.Tensor, ridge: float = RIDGE) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Ridge least squares y ~ x @ W.T + b; returns (W, b, R²) with W (out, in)."""
    x1 = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], 1)
    gram = x1.T @ x1 + ridge * len(x) * torch.eye(x1.shape[1], dtype=x.dtype)
    coef = torch.linalg.solve(gram, x1.T @ y)
    residual = ((x1 @ coef - y) ** 2).sum()
    r2 = float(1 - residual / ((y - y.mean(0)) ** 2).sum())
    return coef[:-1].T.contiguous(), coef[-1].contiguous(), r2


def linearized(model: VisionLanguageModel, images: np.ndarray, device: torch.device | str = "cpu"
               ) -> tuple[VisionLanguageModel, float]:
    """A copy of `model` whose projector is one Linear fitted to its MLP on `images` (N, H, W, 3)."""
    if model.cfg.projector.projection == "linear":
        raise ValueError("the model's projector is linear already")
    was_training = model.training
    model.eval()
    x, y = projector_inputs_outputs(model, images, device=device)
    model.train(was_training)
    weight, bias, r2 = fit_linear(x, y)
    cfg = copy.deepcopy(model.cfg)
    cfg.projector = dataclasses.replace(cfg.projector, projection="linear")
    new = VisionLanguageModel(cfg, model.image_token_id)
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("projector.mlp.")}
    state["projector.mlp.0.weight"] = weight.float()
    state["projector.mlp.0.bias"] = bias.float()
    new.load_state_dict(state)  # strict: every other weight is carried over
    return new.to(next(model.parameters()).device), r2


def linearize_stage(cfg, model: VisionLanguageModel, tokenizer: Tokenizer, data: SceneSet,
                    device: torch.device, log) -> dict:
    n = min(cfg.fit_scenes, len(data))
    idx = np.sort(np.random.default_rng(cfg.seed).choice(len(data), n, replace=False))
    new, r2 = linearized(model, data.images[idx], device)
    log(f"stage linearize: linear projector fitted on {n} scenes ({n * model.image_tokens} tokens), R² {r2:.4f}")
    metrics = {"stage": "linearize", "fit_scenes": n, "fit_r2": r2, "init": cfg.init,
               "train_config": dataclasses.asdict(cfg)}
    save_checkpoint(cfg.out, new.cpu(), tokenizer, metrics)
    log(f"saved {cfg.out}")
    return metrics
