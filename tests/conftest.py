"""Shared fixtures: tiny models and data built in-process (never downloaded, never cached)."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")


from tiny_models import build_tiny_model, tiny_model_config, tiny_tokenizer  # noqa: E402,F401


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> str:
    """A randomly initialised tiny checkpoint directory (config/weights/tokenizer/metrics)."""
    from nanovla.model.checkpoint import save_checkpoint

    model, tok = build_tiny_model()
    path = str(tmp_path_factory.mktemp("ckpt") / "tiny")
    save_checkpoint(path, model, tok, {"note": "random tiny model for tests"})
    return path


@pytest.fixture(scope="session")
def scene_images():
    """A few generated 640x480 RGB frames with their scene graphs."""
    from nanovla.data.scenes import generate

    return [generate("eval", 7, i) for i in range(4)]
