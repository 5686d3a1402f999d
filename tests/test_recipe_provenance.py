"""The shipped default model is what the default recipe's last stage produces: the training config
saved in its metrics.json equals that stage's, field by field (paths aside: where a run keeps its
stage outputs is the machine's business; a field added since the run is compared at its default)."""

import dataclasses
import json
import os

from nanovla.model.paths import default_model_dir
from nanovla.training.recipe import load_recipe
from nanovla.training.train import TrainConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PATHS = {"init", "out", "cache_dir"}


def test_shipped_metrics_match_the_default_recipes_last_stage():
    _, stages, meta = load_recipe(os.path.join(ROOT, "training", "recipes", "default.toml"))
    assert meta["final"] == "nanovla/assets/default_model"
    _, last = stages[-1]
    with open(os.path.join(default_model_dir(), "metrics.json")) as f:
        shipped = json.load(f)["train_config"]
    # a field added to TrainConfig after the shipped run (e.g. stage rl's) counts at its default
    defaults = dataclasses.asdict(TrainConfig())
    fields = {f.name for f in dataclasses.fields(TrainConfig)} - PATHS
    differ = {k: (shipped.get(k, defaults[k]), getattr(last, k)) for k in sorted(fields)
              if shipped.get(k, defaults[k]) != getattr(last, k)}
    assert not differ, f"shipped model vs default.toml's last stage (shipped, recipe): {differ}"
    # the last stage continued the stage before it, run as compose.toml's v3_encoder (README)
    assert os.path.basename(shipped["init"].rstrip("/")) in (os.path.basename(last.init), "v3_encoder")
