"""`nanovla train | probe`: PyTorch (the [train] extra); main.py imports this module only for them."""

from __future__ import annotations

import json

import torch

from ..evaluation.probe import format_table, probe
from ..model.checkpoint import load_checkpoint
from ..model.config import ModelConfig
from ..model.paths import default_model_dir
from ..training.config import TrainConfig
from ..training.recipe import run_recipe
from ..training.train import train
from .common import CLIError, dataclass_from_args, log


def cmd_train(args) -> int:
    if args.recipe:
        run_recipe(args.recipe, only=args.only)
        return 0
    if not args.stage:
        raise CLIError("train needs --stage vision|text|align|sft|linearize or --recipe FILE.toml")
    cfg = dataclass_from_args(TrainConfig, args)
    train(cfg, ModelConfig())
    return 0


def cmd_probe(args) -> int:
    if args.scenes < 10:
        raise CLIError(f"--scenes must be at least 10, got {args.scenes}")
    path = args.model or default_model_dir()
    if args.threads:
        torch.set_num_threads(args.threads)
    model, tokenizer, _ = load_checkpoint(path)
    result = probe(model, tokenizer, scenes=args.scenes, split=args.split, seed=args.seed,
                   answers=not args.no_answers, log=log)
    result["model"] = path
    print(json.dumps(result, indent=2) if args.json else format_table(result))
    return 0
