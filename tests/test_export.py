"""Export: the graphs run and match PyTorch within the stated tolerance, cached decode through the
ONNX graphs gives PyTorch's tokens, bundles are atomic and checked on load, the CLI errors."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

from nanovla.runtime.prompts import DESCRIBE_PROMPT

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
torch = pytest.importorskip("torch")

from export_helpers import quick_options, save_varied_checkpoint  # noqa: E402

VISION_ATOL = 1e-4  # tighter than the export tolerance (1e-3): these are tiny fp32 graphs
LOGITS_ATOL = 1e-3


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return save_varied_checkpoint(str(tmp_path_factory.mktemp("export") / "ckpt"))


@pytest.fixture(scope="module")
def fp32_bundle(checkpoint, tmp_path_factory):
    from nanovla.export.exporter import export_bundle

    out = str(tmp_path_factory.mktemp("export") / "fp32")
    export_bundle(checkpoint, "onnx", out, quick_options(), log=lambda m: None)
    return out


@pytest.fixture(scope="module")
def int8_bundle(checkpoint, tmp_path_factory):
    from nanovla.export.exporter import export_bundle

    out = str(tmp_path_factory.mktemp("export") / "int8")
    export_bundle(checkpoint, "onnx-int8", out, quick_options(), log=lambda m: None)
    return out


def _load(checkpoint):
    from nanovla.model.checkpoint import load_checkpoint

    model, tok, _ = load_checkpoint(checkpoint)
    return model, tok


def test_graphs_are_valid_onnx_with_metadata(fp32_bundle):
    from nanovla.export.graphs import OPSET, check_graph

    for graph in ("vision", "prefill", "decode"):
        path = os.path.join(fp32_bundle, f"{graph}.onnx")
        check_graph(path)  # checker (full) + strict shape inference
        proto = onnx.load(path)
        assert proto.opset_import[0].version >= OPSET
        meta = {p.key: p.value for p in proto.metadata_props}
        assert meta["nanovla.graph"] == graph and meta["producer"].startswith("nanovla")
        assert meta["precision"] == "fp32" and "source_checkpoint" in meta


def test_graphs_match_pytorch(checkpoint, fp32_bundle):
    from nanovla.data.scenes import generate
    from nanovla.export.parity import decode_through_graph
    from nanovla.runtime.preprocess import preprocess
    from nanovla.runtime.ort_backend import OnnxRuntime

    model, tok = _load(checkpoint)
    rt = OnnxRuntime(fp32_bundle, threads=1)
    cfg = model.cfg
    prefix = tok.image_prefix(cfg.image_tokens)
    question = tok.question_suffix("what color is the cube?")
    for i in range(2):
        pixels = preprocess(generate("eval", 3, i)[0], cfg.vision.image_height, cfg.vision.image_width)
        with torch.inference_mode():
            tokens = model.encode_image(torch.from_numpy(pixels))
            ref_prefill, cache = model.prefill(torch.tensor([prefix]), tokens)
            ref_decode, _ = model.prefill(torch.tensor([question]), None, past=cache, start_pos=len(prefix))
        vision = rt.sessions["vision"].run(None, {"pixels": pixels})[0]
        np.testing.assert_allclose(vision, tokens.numpy(), atol=VISION_ATOL, rtol=0)
        out = rt.sessions["prefill"].run(None, {"input_ids": np.array([prefix], np.int32), "image_tokens": vision})
        np.testing.assert_allclose(out[0], ref_prefill.numpy(), atol=LOGITS_ATOL, rtol=0)
        for (k, v), new_k, new_v in zip(cache, out[1::2], out[2::2]):
            np.testing.assert_allclose(new_k, k.numpy(), atol=1e-4, rtol=0)
            np.testing.assert_allclose(new_v, v.numpy(), atol=1e-4, rtol=0)
        # the question one token at a time through the decode graph, into a cache with spare
        # (masked) positions beyond its valid length
        step = decode_through_graph(rt.sessions["decode"], out[1:], len(prefix), question, spare=7)
        np.testing.assert_allclose(step, ref_decode.numpy(), atol=LOGITS_ATOL, rtol=0)


def test_cached_onnx_decode_gives_pytorch_tokens(checkpoint, fp32_bundle):
    from nanovla.data.scenes import generate
    from nanovla.runtime.ort_backend import OnnxRuntime
    from nanovla.runtime.torch_backend import TorchRuntime

    model, tok = _load(checkpoint)
    reference, mine = TorchRuntime.from_model(model, tok), OnnxRuntime(fp32_bundle, threads=1)
    seen = set()
    for i in range(4):
        image = generate("eval", 5, i)[0]
        a_ctx, b_ctx = reference.encode(image), mine.encode(image)
        for question in (DESCRIBE_PROMPT, "how many cubes are there?"):
            a = reference.generate(a_ctx, question, max_new_tokens=12).token_ids
            b = mine.generate(b_ctx, question, max_new_tokens=12).token_ids
            assert a == b, (i, question)
            seen.add(tuple(a))
    assert len(seen) > 1 and max(len(s) for s in seen) >= 8  # the comparison is not vacuous


def test_bundle_json_records_io_parity_and_producer(fp32_bundle):
    from nanovla.runtime.bundle import read_bundle

    data = read_bundle(fp32_bundle)
    assert data["precision"] == "fp32"
    decode = data["graphs"]["decode"]
    assert [t["name"] for t in decode["inputs"][:3]] == ["input_ids", "past_length", "past_key.0"]
    assert decode["inputs"][2]["shape"][2] == "past_sequence" and decode["inputs"][0]["dtype"] == "int32"
    p = data["parity"]["fp32_vs_torch"]
    assert p["passed"] and p["greedy_token_agreement"] == 1.0 and p["scenes"] == 4
    assert p["vision_max_abs_error"] < p["tolerance"]["vision_max_abs"]
    assert data["producer"]["versions"]["onnxruntime"] and data["tokenizer"]["stop_ids"]
    assert data["preprocessing"]["resize"] == [data["model"]["image_height"], data["model"]["image_width"]]


def test_int8_bundle_is_quantized_and_reports_accuracy_next_to_fp32(int8_bundle):
    from nanovla.runtime.bundle import read_bundle
    from nanovla.runtime.ort_backend import OnnxRuntime

    data = read_bundle(int8_bundle)
    assert data["precision"] == "int8"
    q = data["parity"]["int8_vs_fp32"]
    assert set(q) >= {"fp32", "int8", "exact_match_drop", "caption_f1_drop", "passed"}
    assert q["fp32"]["questions"] == q["int8"]["questions"] == 8
    vision_ops = {n.op_type for n in onnx.load(os.path.join(int8_bundle, "vision.onnx")).graph.node}
    prefill_ops = {n.op_type for n in onnx.load(os.path.join(int8_bundle, "prefill.onnx")).graph.node}
    decode_ops = {n.op_type for n in onnx.load(os.path.join(int8_bundle, "decode.onnx")).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= vision_ops  # static QDQ
    assert "MatMulInteger" in prefill_ops  # dynamic quantization
    assert "MatMulNBits" in decode_ops and not decode_ops & {"MatMulInteger", "DynamicQuantizeLinear"}  # weight-only
    assert not os.path.exists(os.path.join(int8_bundle, ".fp32"))
    answer = OnnxRuntime(int8_bundle, threads=1).describe(np.full((48, 64, 3), 90, np.uint8), max_new_tokens=4)
    assert len(answer.token_ids) == 4


@pytest.mark.parametrize("bits,block", [(8, 32), (4, 16)])
def test_pack_nbits_is_what_matmulnbits_reads(bits, block):
    """The numpy packer's layout as onnxruntime's kernel reads it: one MatMulNBits node equals A @
    the blockwise-rounded weight (K not a whole number of blocks, so padding is exercised)."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from nanovla.export.quantize import pack_nbits

    rng = np.random.default_rng(0)
    k, n = 3 * block + block // 2, 24
    w = rng.standard_normal((k, n)).astype(np.float32)
    w[:block, 0] = 0.0  # an all-zero block
    codes, scales = pack_nbits(w, bits, block)
    blocks = -(-k // block)
    assert codes.shape == (n, blocks, block * bits // 8) and scales.shape == (n * blocks,)
    half = 1 << (bits - 1)
    padded = np.zeros((n, blocks * block), np.float32)
    padded[:, :k] = w.T
    s = scales.reshape(n, blocks, 1)
    want_w = (np.clip(np.rint(padded.reshape(n, blocks, block) / s), -half, half - 1) * s).reshape(n, -1)[:, :k].T
    node = helper.make_node("MatMulNBits", ["a", "b", "s"], ["y"], domain="com.microsoft", K=k, N=n, bits=bits,
                            block_size=block, accuracy_level=0)  # fp32 compute: exact up to rounding
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("a", TensorProto.FLOAT, [2, k])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, n])],
                              [numpy_helper.from_array(codes, "b"), numpy_helper.from_array(scales, "s")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    a = rng.standard_normal((2, k)).astype(np.float32)
    got = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"a": a})[0]
    np.testing.assert_allclose(got, a @ want_w, atol=1e-4, rtol=1e-4)
    assert np.abs(want_w - w).max() <= scales.max() / 2 + 1e-6  # rounding error at most half a step


def test_nbits_decode_graph_stays_near_fp32(fp32_bundle, tmp_path):
    """quantize_decoder_nbits on the tiny model's decode graph: every MatMul becomes MatMulNBits,
    it passes the bundle's graph checks, and its logits stay near the fp32 graph's."""
    import onnxruntime as ort

    from nanovla.export.graphs import check_graph
    from nanovla.export.quantize import quantize_decoder_nbits

    src, dst = os.path.join(fp32_bundle, "decode.onnx"), str(tmp_path / "decode.onnx")
    matmuls = sum(n.op_type == "MatMul" and n.input[1] in {t.name for t in onnx.load(src).graph.initializer}
                  for n in onnx.load(src).graph.node)
    assert quantize_decoder_nbits(src, dst) == matmuls > 0
    check_graph(dst)
    ops = [n.op_type for n in onnx.load(dst).graph.node]
    assert ops.count("MatMulNBits") == matmuls
    sessions = [ort.InferenceSession(p, providers=["CPUExecutionProvider"]) for p in (src, dst)]
    rng = np.random.default_rng(0)
    feed = {}
    for i in sessions[0].get_inputs():
        if i.name == "input_ids":
            feed[i.name] = np.array([[5]], np.int32)
        elif i.name == "past_length":
            feed[i.name] = np.array([6], np.int32)
        else:
            feed[i.name] = (0.5 * rng.standard_normal([d if isinstance(d, int) else (1 if d == "batch" else 9)
                                                       for d in i.shape])).astype(np.float32)
    ref, got = (s.run(None, feed) for s in sessions)
    # measured on this tiny model: ~2-3 % of the logits' range with 8 bits (as the dynamic int8
    # graph), 20-35 % with 4 bits; a wrong packing layout gives noise
    scale = float(np.abs(ref[0]).max())
    assert np.abs(got[0] - ref[0]).max() <= 0.05 * scale
    for a, b in zip(ref[1:], got[1:]):  # the new key / value
        assert np.abs(a - b).max() <= 0.05 * float(np.abs(a).max()) + 1e-3


def test_fp16_bundle_keeps_required_io_fp32(checkpoint, tmp_path):
    from nanovla.runtime.bundle import read_bundle
    from nanovla.export.exporter import export_bundle
    from nanovla.runtime.ort_backend import OnnxRuntime

    out = str(tmp_path / "fp16")
    export_bundle(checkpoint, "onnx-fp16", out, quick_options(allow_drift=True), log=lambda m: None)
    data = read_bundle(out)
    dtypes = {(g, t["name"]): t["dtype"] for g, s in data["graphs"].items() for t in s["inputs"] + s["outputs"]}
    assert dtypes[("vision", "pixels")] == dtypes[("decode", "logits")] == "float32"
    assert dtypes[("decode", "past_key.0")] == dtypes[("prefill", "new_value.1")] == "float16"
    assert "fp16_vs_fp32" in data["parity"]
    assert len(OnnxRuntime(out, threads=1).describe(np.zeros((40, 60, 3), np.uint8), max_new_tokens=3).token_ids) == 3


def test_failed_parity_leaves_no_bundle_unless_allow_drift(checkpoint, tmp_path, monkeypatch):
    from nanovla.export import parity
    from nanovla.export.exporter import ExportError, export_bundle

    strict = {**parity.TOLERANCES["fp32"], "vision_max_abs": 0.0}
    monkeypatch.setitem(parity.TOLERANCES, "fp32", strict)
    out = str(tmp_path / "bundle")
    with pytest.raises(ExportError, match="parity outside tolerance: vision max abs error"):
        export_bundle(checkpoint, "onnx", out, quick_options(parity_scenes=1), log=lambda m: None)
    assert os.listdir(tmp_path) == []  # no half bundle, no temporary directory
    data = export_bundle(checkpoint, "onnx", out, quick_options(parity_scenes=1, allow_drift=True), log=lambda m: None)
    assert data["parity"]["passed"] is False and data["parity"]["allow_drift"] is True
    assert os.listdir(tmp_path) == ["bundle"]


# ----------------------------------------------------------------------------- tampered bundles

def _copy(bundle, tmp_path):
    dst = str(tmp_path / "copy")
    shutil.copytree(bundle, dst)
    return dst


def _rewrite(bundle, change):
    path = os.path.join(bundle, "bundle.json")
    with open(path) as f:
        data = json.load(f)
    change(data)
    with open(path, "w") as f:
        json.dump(data, f)


def _load_error(bundle) -> str:
    from nanovla.runtime import RuntimeError_, load_runtime

    with pytest.raises(RuntimeError_) as e:
        load_runtime(bundle, backend="onnxruntime", threads=1)
    message = str(e.value)
    assert "\n" not in message
    return message


def test_missing_file_is_a_clear_error(fp32_bundle, tmp_path):
    bundle = _copy(fp32_bundle, tmp_path)
    os.remove(os.path.join(bundle, "decode.onnx"))
    assert "decode.onnx is missing" in _load_error(bundle)


def test_modified_graph_is_detected(fp32_bundle, tmp_path):
    bundle = _copy(fp32_bundle, tmp_path)
    with open(os.path.join(bundle, "vision.onnx"), "r+b") as f:
        f.seek(-20, os.SEEK_END)
        f.write(b"\x00" * 8)
    assert "sha256 differs" in _load_error(bundle)


def test_graph_whose_inputs_do_not_match_bundle_json(fp32_bundle, tmp_path):
    from nanovla.runtime.bundle import file_entry

    bundle = _copy(fp32_bundle, tmp_path)
    # a different graph put in place of prefill.onnx, with bundle.json's digest "fixed" to match it
    shutil.copy(os.path.join(bundle, "decode.onnx"), os.path.join(bundle, "prefill.onnx"))
    _rewrite(bundle, lambda d: d["graphs"]["prefill"].update(file_entry(bundle, "prefill.onnx")))
    message = _load_error(bundle)
    assert "prefill graph inputs" in message and "past_length" in message
    # and a bundle.json that declares a dtype the graph does not have
    bundle2 = str(tmp_path / "copy2")
    shutil.copytree(fp32_bundle, bundle2)
    _rewrite(bundle2, lambda d: d["graphs"]["decode"]["inputs"][0].update(dtype="int64"))
    assert "input input_ids int32" in _load_error(bundle2)


def test_wrong_tokenizer_is_rejected(fp32_bundle, tmp_path):
    from tiny_models import tiny_tokenizer

    from nanovla.runtime.bundle import file_entry

    bundle = _copy(fp32_bundle, tmp_path)
    tiny_tokenizer(vocab_size=300).save(os.path.join(bundle, "tokenizer.json"))
    assert "sha256" in _load_error(bundle) or "bytes" in _load_error(bundle)
    _rewrite(bundle, lambda d: d["tokenizer"].update(file_entry(bundle, "tokenizer.json")))
    assert "wrong tokenizer" in _load_error(bundle)


def test_checkpoint_given_to_onnxruntime_backend(checkpoint):
    assert "runs an exported bundle" in _load_error(checkpoint)


# ----------------------------------------------------------------------------- CLI

def _cli(argv, capsys):
    from nanovla.cli import main

    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cli_errors(checkpoint, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        _cli(["export", checkpoint, "--to", "onnx-int4"], capsys)
    assert e.value.code == 2
    code, _, err = _cli(["export", checkpoint, "--to", "onnx", "--calibration-count", "8"], capsys)
    assert code == 2 and "--calibration-count does not apply to --to onnx" in err
    code, _, err = _cli(["export", checkpoint, "--to", "onnx-int8", "--calibration-method", "median"], capsys)
    assert code == 2 and "--calibration-method must be one of minmax, entropy, percentile" in err
    code, _, err = _cli(["export", str(tmp_path / "nope"), "--to", "onnx"], capsys)
    assert code == 2 and "no such model directory" in err
    code, _, err = _cli(["export", checkpoint, "--to", "onnx", "--out", checkpoint], capsys)
    assert code == 2 and "--out must differ" in err
    assert err.count("\n") == 1  # one line, no traceback


def test_cli_tensorrt_without_tensorrt_is_one_line(checkpoint, tmp_path, capsys):
    try:
        import tensorrt  # noqa: F401
        pytest.skip("TensorRT is installed here")
    except ImportError:
        pass
    code, _, err = _cli(["export", checkpoint, "--to", "tensorrt", "--out", str(tmp_path / "trt")], capsys)
    assert code == 2 and "needs TensorRT" in err and err.count("\n") == 1
    assert not os.path.exists(tmp_path / "trt")


def test_cli_export_and_run_bundle(checkpoint, tmp_path, capsys):
    import cv2

    from nanovla.data.scenes import generate

    out = str(tmp_path / "bundle")
    code, stdout, err = _cli(["export", checkpoint, "--to", "onnx", "--out", out, "--parity-scenes", "2",
                              "--threads", "1", "--json"], capsys)
    assert code == 0, err
    assert json.loads(stdout)["parity"]["fp32_vs_torch"]["passed"]
    assert "export: decode fp32" in err and "MB" in err  # each step logs what it wrote and its size
    image = str(tmp_path / "scene.png")
    cv2.imwrite(image, cv2.cvtColor(generate("eval", 1, 0)[0], cv2.COLOR_RGB2BGR))
    results = {}
    for backend, model in (("torch", checkpoint), ("onnxruntime", out)):
        code, stdout, err = _cli(["describe", image, "--backend", backend, "--model", model, "--json",
                                  "--max-new-tokens", "8", "--threads", "1"], capsys)
        assert code == 0, err
        results[backend] = json.loads(stdout)["description"]
    assert results["torch"] == results["onnxruntime"]
    code, stdout, err = _cli(["info", "--model", out], capsys)
    assert code == 0 and json.loads(stdout)["format"] == "nanovla-bundle/1"


def test_perceiver_projector_exports(tmp_path):
    from tiny_models import build_tiny_model

    from nanovla.export.graphs import check_graph, export_graph

    model, _ = build_tiny_model(resampler="perceiver")
    path = str(tmp_path / "vision.onnx")
    export_graph(model, "vision", path, {"producer": "test"})
    check_graph(path)
    import onnxruntime as ort

    pixels = torch.rand(2, 3, 64, 96)  # batch 2: the batch dim is dynamic
    with torch.inference_mode():
        reference = model.encode_image(pixels).numpy()
    mine = ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, {"pixels": pixels.numpy()})[0]
    np.testing.assert_allclose(mine, reference, atol=VISION_ATOL, rtol=0)


def test_benchmark_reuses_a_bundle_only_while_its_checkpoint_is_unchanged(checkpoint, fp32_bundle, tmp_path,
                                                                          monkeypatch):
    """benchmarks/bench_runtime.py exports bundles on demand; one made from other weights (older
    weights of the same checkpoint, or another checkpoint) must be re-exported, not benchmarked as
    if it were this model: bundle.json's source weights digest decides."""
    import argparse
    import importlib.util

    from nanovla.export import exporter
    from nanovla.runtime.bundle import weights_digest

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    spec = importlib.util.spec_from_file_location("bench_runtime", os.path.join(root, "benchmarks", "bench_runtime.py"))
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    exports = []
    monkeypatch.setattr(exporter, "export_bundle", lambda ckpt, fmt, out, *a, **k: exports.append((fmt, out)))
    bundles = tmp_path / "bundles"
    shutil.copytree(fp32_bundle, bundles / "onnx")
    args = argparse.Namespace(parity_scenes=2, threads=1)

    assert read_producer(bundles / "onnx")["source_weights_sha256"] == weights_digest(checkpoint)
    assert bench.ensure_bundle(checkpoint, "onnx", str(bundles), args) == str(bundles / "onnx")
    assert exports == []  # reused
    _rewrite(str(bundles / "onnx"), lambda d: d["producer"].update(source_weights_sha256="0" * 64))
    bench.ensure_bundle(checkpoint, "onnx", str(bundles), args)  # other weights: stale
    assert exports == [("onnx", str(bundles / "onnx"))]


def read_producer(bundle) -> dict:
    with open(os.path.join(bundle, "bundle.json")) as f:
        return json.load(f)["producer"]
