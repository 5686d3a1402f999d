"""Pooled image features of a frozen encoder, computed once per cached scene.

With the vision encoder frozen (stages align and sft unless `train_vision`) and a grid
resampler, everything up to the resampler's LayerNorm is a fixed function of the image: the
encoder forward that used to run on every sampled image every step runs once per scene here,
and training reads (tokens, C) float32 rows from a memory-mapped file instead. The file is keyed
by a digest of the encoder's weights and of the images, so a changed encoder or a different
scene set never reads stale features.
"""

from __future__ import annotations

import hashlib
import os

import numpy as np
import torch

from ..data.dataset import SceneSet
from ..model.vlm import VisionLanguageModel


def _digest(model: VisionLanguageModel, data: SceneSet) -> str:
    h = hashlib.sha256()
    for name, t in sorted(model.vision.state_dict().items()):  # weights and BatchNorm statistics
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    h.update(repr(model.projector.resampler.kernels).encode())
    n = len(data)
    h.update(repr((n, data.images.shape)).encode())
    for i in sorted({0, n // 3, n // 2, n - 1} | set(range(0, n, max(1, n // 64)))):  # a sample of images
        h.update(np.ascontiguousarray(data.images[i]).tobytes())
    return h.hexdigest()[:16]


@torch.no_grad()
def pooled_feature_cache(model: VisionLanguageModel, data: SceneSet, cache_dir: str, batch: int = 64,
                         device: torch.device | str = "cpu", log=print) -> np.ndarray:
    """(N, image_tokens, C) float32 memory map of `model.pooled_features` for every image of `data`."""
    if not model.projector.poolable:
        raise ValueError("pooled features need the grid resampler (a Perceiver resampler's first layer trains)")
    path = os.path.join(cache_dir, f"pooled-{_digest(model, data)}.npy")
    if os.path.isfile(path):
        return np.load(path, mmap_mode="r")
    os.makedirs(cache_dir, exist_ok=True)
    was_training = model.vision.training
    model.vision.eval()
    n = len(data)
    out = None
    for s in range(0, n, batch):
        pixels = torch.from_numpy(np.array(data.images[s:s + batch])).to(device)
        pooled = model.pooled_features(pixels.permute(0, 3, 1, 2).float() / 255).float().cpu().numpy()
        if out is None:
            out = np.lib.format.open_memmap(path + ".tmp", mode="w+", dtype=np.float32, shape=(n, *pooled.shape[1:]))
        out[s:s + len(pooled)] = pooled
        if log and (s // batch) % 50 == 0:
            log(f"pooled features: {min(s + batch, n)}/{n} images")
    out.flush()
    del out
    model.vision.train(was_training)
    os.replace(path + ".tmp", path)
    return np.load(path, mmap_mode="r")
