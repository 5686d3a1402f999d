"""A bundle-only install: with PyTorch unimportable, `nanovla data generate`, `describe`, `ask`
and `eval` run with their defaults (backend auto -> the shipped int8 bundle on onnxruntime).
Each command runs in a subprocess whose sitecustomize blocks `import torch`."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from torch_free_helpers import torch_free_env

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLE = os.path.join(REPO, "nanovla", "assets", "samples", "scene_0.jpg")


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    from nanovla.model.paths import default_bundle_dir
    from nanovla.runtime.bundle import is_bundle

    assert is_bundle(default_bundle_dir()), "no shipped bundle: run bash scripts/export_default_bundle.sh"
    base = {**os.environ, "OMP_NUM_THREADS": "1"}
    base["PYTHONPATH"] = os.pathsep.join([REPO] + [p for p in base.get("PYTHONPATH", "").split(os.pathsep) if p])
    return torch_free_env(str(tmp_path_factory.mktemp("no_torch")), base)


def nanovla(env, *args, expect: int = 0) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "nanovla.cli", *args], capture_output=True, text=True, env=env,
                            timeout=300, cwd=REPO)
    assert result.returncode == expect, f"nanovla {' '.join(args)}: exit {result.returncode}\n{result.stderr[-2000:]}"
    return result


def test_the_shim_blocks_torch(env):
    result = subprocess.run([sys.executable, "-c", "import torch"], capture_output=True, text=True, env=env)
    assert result.returncode != 0 and "blocked: a torch-free test" in result.stderr


def test_describe_and_ask_run_the_shipped_bundle_without_torch(env):
    described = json.loads(nanovla(env, "describe", SAMPLE, "--json", "--threads", "1").stdout)
    assert described["image"] == SAMPLE and len(described["description"].split()) >= 3
    answer = json.loads(nanovla(env, "ask", SAMPLE, "how many objects are there?", "--json", "--threads", "1").stdout)
    assert answer["answer"]


def test_data_generate_and_eval_run_without_torch(env, tmp_path):
    data = str(tmp_path / "eval")
    nanovla(env, "data", "generate", "--out", data, "--count", "3", "--seed", "5", "--split", "eval",
            "--questions", "2")
    assert len(open(os.path.join(data, "data.jsonl")).read().splitlines()) == 3
    metrics = json.loads(nanovla(env, "eval", "--data", data, "--threads", "1").stdout)
    assert metrics["backend"] == "onnxruntime" and metrics["images"] == 3 and metrics["questions"] == 6
    assert os.path.basename(os.path.normpath(metrics["model"])) == "default_bundle"


def test_asking_for_torch_without_it_is_one_line(env):
    result = nanovla(env, "describe", SAMPLE, "--backend", "torch", expect=2)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "backend 'torch' is not available here" in lines[0] and "nanovla[torch]" in lines[0]


def test_info_reads_a_checkpoint_and_a_bundle_without_torch(env):
    from nanovla.model.paths import default_bundle_dir, default_model_dir

    checkpoint = json.loads(nanovla(env, "info", "--model", default_model_dir()).stdout)
    assert checkpoint["config"]["model"]["decoder"]["n_layer"] >= 1 and "train_config" in checkpoint["metrics"]
    bundle = json.loads(nanovla(env, "info", "--model", default_bundle_dir()).stdout)
    assert bundle["format"].startswith("nanovla-bundle/") and bundle["model"]["image_tokens"] >= 1
