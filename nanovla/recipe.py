"""Recipes: a TOML file that runs several training stages in order.

    [model.decoder]            # ModelConfig overrides for a fresh model (first stage)
    n_layer = 6
    [[stage]]                  # each [[stage]] is a TrainConfig; `name` labels it
    name = "text"
    stage = "text"
    out = "runs/default/text"
    [[stage]]
    name = "sft"
    stage = "sft"
    init = "runs/default/text"
    ...
    [recipe]
    final = "nanovla/assets/default_model"   # the last stage's output is copied here
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import sys
import time
import tomllib

from .config import ModelConfig
from .train import TrainConfig, train


def load_recipe(path: str) -> tuple[ModelConfig, list[tuple[str, TrainConfig]], dict]:
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ValueError(f"{path}: no such recipe") from None
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"{path}: not valid TOML ({e})") from None
    model_cfg = ModelConfig.from_dict(data.get("model", {}))
    defaults = data.get("defaults", {})
    stages = []
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    for i, raw in enumerate(data.get("stage", [])):
        raw = {**defaults, **raw}
        name = raw.pop("name", f"stage{i}")
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ValueError(f"{path}: stage {name!r} has unknown keys: {', '.join(unknown)}")
        cfg = TrainConfig(**raw)
        cfg.validate() if cfg.stage == "text" or cfg.init else None
        stages.append((name, cfg))
    if not stages:
        raise ValueError(f"{path}: no [[stage]] tables")
    return model_cfg, stages, data.get("recipe", {})


def run_recipe(path: str, only: str | None = None) -> None:
    model_cfg, stages, meta = load_recipe(path)
    t0 = time.perf_counter()
    timings = {}
    for name, cfg in stages:
        if only and name != only:
            continue
        if os.path.isfile(os.path.join(cfg.out, "model.safetensors")) and not os.path.isdir(cfg.out + ".resume"):
            print(f"recipe: {name}: {cfg.out} exists, skipping (delete it to retrain)", file=sys.stderr)
            continue
        t = time.perf_counter()
        train(cfg, model_cfg)
        timings[name] = time.perf_counter() - t
        print(f"recipe: {name} took {timings[name] / 60:.1f} min", file=sys.stderr)
    final = meta.get("final")
    if final and not only:
        last = stages[-1][1].out
        tmp = final.rstrip("/") + ".tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(last, tmp, ignore=shutil.ignore_patterns("*.resume"))
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        print(f"recipe: copied {last} to {final}", file=sys.stderr)
    print(f"recipe: done in {(time.perf_counter() - t0) / 60:.1f} min", file=sys.stderr)
