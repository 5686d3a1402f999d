"""The shipped int8 bundle (nanovla/assets/default_bundle) is the shipped default model's: it was
exported from the model's current weights, loads with its digests checked, and its int8 answers
stayed within 2 points of fp32 exact match at export. And `backend = auto` picks it.

A failure here after the default model changed means: run `bash scripts/export_default_bundle.sh`
and commit nanovla/assets/default_bundle with the model."""

from __future__ import annotations

import os

import pytest

from nanovla.model.paths import default_bundle_dir, default_model_dir
from nanovla.runtime.base import RuntimeError_, choose_backend
from nanovla.runtime.bundle import is_bundle, read_bundle, weights_digest

REEXPORT = "re-export it: bash scripts/export_default_bundle.sh (then commit nanovla/assets/default_bundle)"


@pytest.fixture(scope="module")
def bundle() -> dict:
    assert is_bundle(default_bundle_dir()), f"{default_bundle_dir()} is missing; {REEXPORT}"
    return read_bundle(default_bundle_dir())  # every file's size and sha256, and the tokenizer


def test_the_shipped_bundle_was_exported_from_the_shipped_weights(bundle):
    recorded = bundle["producer"].get("source_weights_sha256")
    current = weights_digest(default_model_dir())
    assert recorded == current, (f"STALE BUNDLE: {default_bundle_dir()} was exported from weights {recorded}, "
                                 f"but {default_model_dir()}/model.safetensors is {current}; {REEXPORT}")
    assert bundle["producer"]["source_checkpoint"] == "nanovla/assets/default_model"


def test_the_shipped_bundle_has_the_shipped_tokenizer(bundle):
    from nanovla.model.tokenizer import tokenizer_fingerprint

    assert bundle["tokenizer"]["fingerprint"] == tokenizer_fingerprint(
        os.path.join(default_model_dir(), "tokenizer.json")), f"the tokenizer changed; {REEXPORT}"


def test_int8_stayed_within_two_points_of_fp32_at_export(bundle):
    parity = bundle["parity"]
    assert bundle["precision"] == "int8" and parity["passed"] and not parity["allow_drift"]
    q = parity["int8_vs_fp32"]
    assert q["scenes"] >= 50
    assert q["int8"]["exact_match"] >= q["fp32"]["exact_match"] - 0.02
    assert parity["fp32_vs_torch"]["greedy_token_agreement"] >= 0.98


def test_auto_picks_the_bundle_for_no_model_and_for_a_bundle_torch_for_a_checkpoint(tmp_path):
    pytest.importorskip("onnxruntime")
    assert choose_backend(None) == (default_bundle_dir(), "onnxruntime")
    assert choose_backend(None, "auto") == (default_bundle_dir(), "onnxruntime")
    assert choose_backend(default_bundle_dir()) == (default_bundle_dir(), "onnxruntime")
    assert choose_backend(default_model_dir()) == (default_model_dir(), "torch")  # --model names the weights
    assert choose_backend(None, "torch") == (default_model_dir(), "torch")
    assert choose_backend(None, "onnxruntime") == (default_bundle_dir(), "onnxruntime")
    with pytest.raises(RuntimeError_, match="unknown backend 'jax'"):
        choose_backend(None, "jax")
    with pytest.raises(RuntimeError_, match="no such model directory"):
        choose_backend(str(tmp_path / "nope"))


def test_auto_falls_back_to_torch_where_onnxruntime_does_not_import(monkeypatch):
    from nanovla.runtime import base

    monkeypatch.setattr(base, "_onnxruntime_imports", lambda: False)
    assert choose_backend(None) == (default_model_dir(), "torch")
    assert choose_backend(default_bundle_dir()) == (default_bundle_dir(), "onnxruntime")  # says why when loaded


def test_the_cli_and_the_ros_node_default_to_auto():
    from nanovla.cli import build_parser

    args = build_parser().parse_args(["describe", "x.png"])
    assert args.backend == "auto"
    params = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                          "ros2_ws", "src", "nanovla_ros", "config", "params.yaml")
    with open(params) as f:
        assert any(line.split("#")[0].split() == ["backend:", "auto"] for line in f)


def test_the_shipped_model_names_no_colours_on_a_mono_camera():
    """A mono8 camera's frame reaches the model as grey RGB (the ROS node's conversion: GRAY2RGB):
    the shipped model's captions of the grey samples name kinds and places and no colour (stage
    13's grey-image captions; stage 11 named colours on 76 of 100 grey frames)."""
    import json

    import cv2

    from nanovla.data.scenes import COLOR_NAMES, KINDS
    from nanovla.runtime.base import load_runtime
    from nanovla.runtime.preprocess import load_image
    from nanovla.runtime.prompts import DESCRIBE_PROMPT

    samples = os.path.join(os.path.dirname(default_model_dir()), "samples")
    with open(os.path.join(samples, "ground_truth.json")) as f:
        truth = json.load(f)
    runtime = load_runtime(None, threads=1)
    for row in truth:
        image = load_image(os.path.join(samples, row["image"]))
        grey = cv2.cvtColor(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY), cv2.COLOR_GRAY2RGB)
        text = runtime.generate(runtime.encode(grey), DESCRIBE_PROMPT, max_new_tokens=64).text
        words = set(text.replace(",", " ").replace(".", " ").split())
        assert not words & set(COLOR_NAMES), (row["image"], text)
        assert words & set(KINDS) & {o["kind"] for o in row["objects"]}, (row["image"], text)
        colour_text = runtime.generate(runtime.encode(image), DESCRIBE_PROMPT, max_new_tokens=64).text
        assert set(colour_text.replace(",", " ").split()) & set(COLOR_NAMES), (row["image"], colour_text)
