"""Auxiliary object heads on the image tokens (training only; never saved with the model).

Two linear heads read each grid cell's image token (the projector's output): the kind and the
colour of the object covering that cell. Their cross-entropy, weighted by `TrainConfig.token_aux`,
is added to the language loss, so the projector keeps kind and colour as separate linear
directions of the tokens — what a (colour, kind) pair never seen in a training image needs.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .data.scenes import COLOR_NAMES, KINDS, Scene
from .vision_stage import dense_targets


class TokenHeads(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.kind = nn.Linear(width, len(KINDS))
        self.colour = nn.Linear(width, len(COLOR_NAMES))

    def loss(self, tokens: torch.Tensor, kind: torch.Tensor, colour: torch.Tensor) -> torch.Tensor:
        """tokens (B, N, D); kind/colour (B, N) labels, 0 = no object (not scored), else index + 1."""
        k = F.cross_entropy(self.kind(tokens.float()).flatten(0, 1), kind.flatten() - 1, ignore_index=-1)
        c = F.cross_entropy(self.colour(tokens.float()).flatten(0, 1), colour.flatten() - 1, ignore_index=-1)
        return k + c


def grid_targets(scenes: list[Scene], rows: int, cols: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(len(scenes), rows*cols) kind and colour labels of every scene's token grid."""
    pairs = [dense_targets(s, rows, cols) for s in scenes]
    kind = np.stack([p[0].reshape(-1) for p in pairs])
    colour = np.stack([p[1].reshape(-1) for p in pairs])
    return torch.from_numpy(kind), torch.from_numpy(colour)
