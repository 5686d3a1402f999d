"""TensorRT, checked as far as it can be without TensorRT: every op of the exported graphs is in
TensorRT's supported-operator list, dynamic dims are declared and covered by the optimization
profiles, no int64 on the data path, and the guards give one clear line."""

from __future__ import annotations

import os

import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("torch")

from export_helpers import quick_options, save_varied_checkpoint  # noqa: E402


def _has_tensorrt() -> bool:
    try:
        import tensorrt  # noqa: F401
        return True
    except ImportError:
        return False


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    from nanovla.export.exporter import export_bundle

    root = tmp_path_factory.mktemp("trt")
    checkpoint = save_varied_checkpoint(str(root / "ckpt"), seed=2)
    out = str(root / "bundle")
    export_bundle(checkpoint, "onnx", out, quick_options(parity_scenes=1), log=lambda m: None)
    return out


def test_supported_ops_list_names_its_source_and_version():
    from nanovla.export.trt_check import OPS_FILE, supported_ops

    with open(OPS_FILE) as f:
        header = f.read(600)
    assert "github.com/onnx/onnx-tensorrt docs/operators.md" in header and "commit" in header
    version, table = supported_ops()
    assert version == "10.1" and len(table) > 150
    assert table["MatMul"]["supported"] and not table["Unique"]["supported"]
    assert not table["MatMulInteger"]["supported"]


def test_exported_graphs_pass_the_tensorrt_checks(bundle):
    from nanovla.export.trt_check import check_bundle_for_tensorrt

    reports = check_bundle_for_tensorrt(bundle)
    assert set(reports) == {"vision", "prefill", "decode"}
    for graph, report in reports.items():
        assert report["problems"] == [], (graph, report["problems"])
        assert "Conv" in reports["vision"]["ops"] and "MatMul" in reports["decode"]["ops"]


def test_checker_flags_unsupported_ops_int64_and_undeclared_dims(tmp_path):
    from onnx import TensorProto, helper

    from nanovla.export.trt_check import check_onnx_for_tensorrt

    x = helper.make_tensor_value_info("ids", TensorProto.INT64, [1, 4])
    y = helper.make_tensor_value_info("unique", TensorProto.INT64, None)
    graph = helper.make_graph([helper.make_node("Unique", ["ids"], ["unique"])], "g", [x], [y])
    path = str(tmp_path / "bad.onnx")
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    problems = " | ".join(check_onnx_for_tensorrt(path, {"ids": ("batch", "sequence")})["problems"])
    assert "Unique is not supported" in problems
    assert "ids is int64" in problems
    assert "does not declare the dynamic dim 'batch'" in problems


def test_optimization_profiles_cover_every_dynamic_input(bundle):
    from nanovla.runtime.bundle import read_bundle
    from nanovla.export.tensorrt_build import profile_shapes

    data = read_bundle(bundle)
    for graph, spec in data["graphs"].items():
        shapes = profile_shapes(graph, data["model"], max_batch=4)
        for tensor in spec["inputs"]:
            if not any(isinstance(d, str) for d in tensor["shape"]):
                continue
            lo, opt, hi = shapes[tensor["name"]]
            for dims in (lo, opt, hi):
                assert len(dims) == len(tensor["shape"])
                for d, declared in zip(dims, tensor["shape"]):
                    assert isinstance(declared, str) or d == declared
            assert all(a <= b <= c for a, b, c in zip(lo, opt, hi))
            assert hi[0] == 4
    decode = profile_shapes("decode", data["model"], 1)
    assert decode["past_key.0"][2][2] == data["model"]["max_seq_len"]  # the runtime binds the full length


@pytest.mark.skipif(_has_tensorrt(), reason="TensorRT is installed: the guard does not apply")
def test_tensorrt_guards_are_one_line(bundle, tmp_path):
    from nanovla.export.exporter import ExportError, export_bundle
    from nanovla.runtime import RuntimeError_, load_runtime

    with pytest.raises(RuntimeError_) as e:
        load_runtime(bundle, backend="tensorrt")
    assert "needs TensorRT" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(ExportError, match="needs TensorRT"):
        export_bundle(os.path.join(bundle, "nope"), "tensorrt", str(tmp_path / "x"), quick_options())
    assert not os.path.exists(tmp_path / "x")


def test_bench_tensorrt_skips_cleanly_without_a_gpu():
    import subprocess
    import sys

    if _has_tensorrt():
        pytest.skip("TensorRT is installed")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    result = subprocess.run([sys.executable, os.path.join(root, "benchmarks", "bench_tensorrt.py"), "--model", "x"],
                            capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": root})
    assert result.returncode == 0
    assert "skip" in (result.stdout + result.stderr).lower()
