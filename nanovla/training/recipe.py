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
    [recipe.init]                            # optional: the first checkpoint from pretrained parts
    encoder = "${MODELS}/siglip-base-patch16-224"   # (nanovla init; $VARS are expanded in paths)
    decoder = "${MODELS}/SmolLM2-135M"
    out = "runs/gpu/init"
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import sys
import time

import tomllib

from ..model.config import ModelConfig
from ..model.pretrained import init_checkpoint
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
        cfg.validate() if cfg.stage in ("vision", "text") or cfg.init else None
        stages.append((name, cfg))
    if not stages:
        raise ValueError(f"{path}: no [[stage]] tables")
    return model_cfg, stages, data.get("recipe", {})


_WITH_DEFAULT = re.compile(r"\$\{(\w+):-([^}]*)\}")


def expand(value, where: str):
    """$VARS in recipe paths (`${MODELS}/SmolLM2-135M`): one recipe for every machine's layout;
    `${NANOVLA_RUNS:-runs}` falls back to `runs` when the variable is unset or empty."""
    if isinstance(value, str) and "$" in value:
        expanded = _WITH_DEFAULT.sub(lambda m: os.environ.get(m.group(1)) or m.group(2), value)
        expanded = os.path.expandvars(expanded)
        if "$" in expanded:
            raise ValueError(f"{where}: {value!r} names an unset environment variable")
        return expanded
    if isinstance(value, list):
        return [expand(v, where) for v in value]
    if isinstance(value, dict):
        return {k: expand(v, where) for k, v in value.items()}
    return value


def run_init(spec: dict, log=print) -> None:
    """`[recipe.init]`: build the starting checkpoint from pretrained parts (`nanovla init`) once.
    Under torchrun only rank 0 builds it; the other ranks wait for it."""
    spec = expand(spec, "[recipe.init]")
    out = spec["out"]
    if os.path.isfile(os.path.join(out, "model.safetensors")):
        log(f"recipe: init: {out} exists, skipping")
        return
    if int(os.environ.get("RANK", "0")) != 0:
        deadline = time.time() + 3600
        while not os.path.isfile(os.path.join(out, "model.safetensors")):
            if time.time() > deadline:
                raise TimeoutError(f"rank {os.environ.get('RANK')}: {out} did not appear within an hour")
            time.sleep(2)
        return

    size = spec.get("image_size")
    init_checkpoint(spec["encoder"], spec["decoder"], out, image_tokens=int(spec.get("image_tokens", 0)),
                    max_seq_len=int(spec.get("max_seq_len", 0)), image_size=tuple(size) if size else None,
                    resampler=spec.get("resampler", "auto"), log=log)


def run_recipe(path: str, only: str | None = None, overrides: dict | None = None) -> None:
    """Run the recipe's stages in order; `overrides` replace TrainConfig fields of every stage
    (a smoke run: {"steps": 2, "device": "cpu"})."""
    model_cfg, stages, meta = load_recipe(path)
    t0 = time.perf_counter()
    timings = {}
    if meta.get("init") and not only:
        run_init({**meta["init"], **(overrides or {}).get("init", {})}, log=lambda m: print(m, file=sys.stderr))
    for name, cfg in stages:
        if only and name != only:
            continue
        changes = {k: v for k, v in (overrides or {}).items() if k != "init"}
        paths = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)
                 if isinstance(getattr(cfg, f.name), (str, list))}
        cfg = dataclasses.replace(cfg, **{**expand(paths, f"stage {name!r}"), **changes})
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
