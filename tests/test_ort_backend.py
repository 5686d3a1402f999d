"""The onnxruntime backend: runs a bundle with torch unimportable, streams, stops, samples
reproducibly, and keeps its preallocated KV cache bound (no whole-cache copy per step)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from nanovla.runtime.prompts import DESCRIBE_PROMPT

pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("torch")

from export_helpers import quick_options, save_varied_checkpoint  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    from nanovla.export.exporter import export_bundle

    root = tmp_path_factory.mktemp("ort")
    checkpoint = save_varied_checkpoint(str(root / "ckpt"), seed=1)
    out = str(root / "bundle")
    export_bundle(checkpoint, "onnx", out, quick_options(parity_scenes=2), log=lambda m: None)
    return out


@pytest.fixture(scope="module")
def runtime(bundle):
    from nanovla.runtime import load_runtime

    return load_runtime(bundle, backend="onnxruntime", threads=1)


def test_runs_without_torch(bundle, tmp_path):
    import cv2

    from nanovla.data.scenes import generate

    image = str(tmp_path / "scene.png")
    cv2.imwrite(image, cv2.cvtColor(generate("eval", 2, 0)[0], cv2.COLOR_RGB2BGR))
    script = textwrap.dedent(f"""
        import sys
        sys.modules["torch"] = None  # any `import torch` now raises ImportError
        from nanovla.runtime import load_runtime
        from nanovla.runtime.preprocess import load_image
        rt = load_runtime({bundle!r}, backend="onnxruntime", threads=1)
        print(len(rt.describe(load_image({image!r}), max_new_tokens=6).token_ids))
        from nanovla.cli import main
        code = main(["describe", {image!r}, "--backend", "onnxruntime", "--model", {bundle!r}, "--json",
                     "--max-new-tokens", "6", "--threads", "1"])
        assert "torch" not in sys.modules or sys.modules["torch"] is None
        sys.exit(code)
    """)
    env = {**os.environ, "PYTHONPATH": REPO, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert lines[0] == "6" and "description" in json.loads(lines[1])


def test_streaming_and_stop(runtime):
    image = np.full((60, 80, 3), 120, np.uint8)
    context = runtime.encode(image)
    seen = []
    full = runtime.generate(context, DESCRIBE_PROMPT, max_new_tokens=10, on_token=lambda t, s: seen.append(t))
    assert seen == full.token_ids and len(seen) == 10
    stopped = runtime.generate(context, DESCRIBE_PROMPT, max_new_tokens=10,
                               on_token=lambda t, s: len(s) < 1)  # stop after the first token
    assert stopped.stopped and stopped.token_ids == full.token_ids[:1]
    again = runtime.generate(context, DESCRIBE_PROMPT, max_new_tokens=10)  # context is not consumed
    assert again.token_ids == full.token_ids


def test_sampling_is_reproducible_with_a_seed(runtime):
    context = runtime.encode(np.full((60, 80, 3), 30, np.uint8))
    kwargs = dict(max_new_tokens=8, temperature=1.5, top_k=50, top_p=0.9)
    a = runtime.generate(context, "what is on the table?", seed=3, **kwargs).token_ids
    b = runtime.generate(context, "what is on the table?", seed=3, **kwargs).token_ids
    assert a == b and len(a) == 8


def test_decode_loop_binds_preallocated_buffers_without_copies():
    # the decode loop relies on OrtValues wrapping numpy memory on CPU: writes to the array
    # are seen by the next run, and bound outputs land in the caller's array
    array = np.zeros((2, 3), np.float32)
    value = ort.OrtValue.ortvalue_from_numpy(array)
    array[1, 2] = 7.0
    assert value.numpy()[1, 2] == 7.0
    assert value.data_ptr() == array.ctypes.data


def test_prompt_too_long_and_bad_provider(runtime, bundle):
    from nanovla.runtime import RuntimeError_, load_runtime

    context = runtime.encode(np.zeros((32, 32, 3), np.uint8))
    with pytest.raises(ValueError, match="does not fit the context"):
        runtime.generate(context, "x " * 240, max_new_tokens=4)
    with pytest.raises(RuntimeError_, match="unknown provider"):
        load_runtime(bundle, backend="onnxruntime", provider="directml")
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        with pytest.raises(RuntimeError_, match="no CUDAExecutionProvider"):
            load_runtime(bundle, backend="onnxruntime", device="cuda")
    if "TensorrtExecutionProvider" not in ort.get_available_providers():
        with pytest.raises(RuntimeError_, match="no TensorrtExecutionProvider"):
            load_runtime(bundle, backend="onnxruntime", device="tensorrt")


def test_eval_cli_with_onnxruntime(bundle, tmp_path, capsys):
    from nanovla.cli import main

    data = str(tmp_path / "data")
    assert main(["data", "generate", "--out", data, "--count", "2", "--split", "eval", "--questions", "2"]) == 0
    code = main(["eval", "--data", data, "--backend", "onnxruntime", "--model", bundle, "--threads", "1"])
    out = capsys.readouterr().out
    assert code == 0
    metrics = json.loads(out)
    assert metrics["backend"] == "onnxruntime" and metrics["images"] == 2 and metrics["questions"] == 4


def test_default_cpu_threads_is_one_on_a_two_cpu_machine(monkeypatch):
    """On <= 2 logical CPUs a second intra-op thread makes describe ~3x slower (README), so the
    default is 1 there; elsewhere (and for GPU providers) onnxruntime's own default."""
    import nanovla.runtime.ort_backend as ort_backend
    from nanovla.model.paths import default_bundle_dir

    assert ort_backend.default_cpu_threads("cpu", 2) == 1 and ort_backend.default_cpu_threads("cpu", 1) == 1
    assert ort_backend.default_cpu_threads("cpu", 16) is None and ort_backend.default_cpu_threads("cuda", 2) is None
    monkeypatch.setattr(ort_backend.os, "cpu_count", lambda: 2)
    assert ort_backend.OnnxRuntime(default_bundle_dir()).threads == 1
    assert ort_backend.OnnxRuntime(default_bundle_dir(), threads=2).threads == 2  # asked for: kept
