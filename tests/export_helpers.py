"""Helpers shared by the export / onnxruntime / TensorRT-check tests (tiny models, built in-process)."""

from __future__ import annotations


def build_varied_model(seed: int = 0):
    """The tiny test model with weights scaled so greedy decoding varies (a random tiny model at
    its training init emits one repeated token, which would make token-agreement tests vacuous).
    Special-token rows are zeroed so answers run to max_new_tokens instead of stopping at once."""
    import torch

    from tiny_models import build_tiny_model

    model, tok = build_tiny_model(seed=seed)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.decoder.named_parameters():
            if p.dim() == 2:
                scale = 3.0 if "embed" in name else 1.0
                p.copy_(torch.randn(p.shape, generator=g) / p.shape[1] ** 0.5 * scale)
        for p in model.projector.mlp.parameters():
            if p.dim() == 2:
                p.mul_(30)
        model.decoder.embed_tokens.weight[list(tok.special_ids().values())] = 0.0
    return model.eval(), tok


def save_varied_checkpoint(path: str, seed: int = 0) -> str:
    from nanovla.model.checkpoint import save_checkpoint

    model, tok = build_varied_model(seed)
    save_checkpoint(path, model, tok, {"note": "scaled random tiny model for export tests"})
    return path


def quick_options(**overrides):
    from nanovla.export.formats import ExportOptions

    values = {"parity_scenes": 4, "parity_questions": 2, "calibration_count": 4, "threads": 1}
    values.update(overrides)
    return ExportOptions(**values)
