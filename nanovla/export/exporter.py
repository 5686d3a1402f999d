"""Checkpoint -> bundle: export the graphs, quantize/convert/build, measure parity, write bundle.json.

Everything is written into a temporary sibling directory that is renamed into place only when
every step (checks and parity included) succeeded, so a failed export leaves no half bundle.
Each step is timed and logs what it wrote and its size.
"""

from __future__ import annotations

import datetime
import os
import shutil
import time
from typing import Callable

from ..model.checkpoint import CheckpointError, atomic_directory_write, load_checkpoint
from ..model.paths import PACKAGE_DIR
from ..model.tokenizer import tokenizer_fingerprint
from ..runtime.bundle import GRAPH_FILES, GRAPHS, file_entry, weights_digest, write_bundle_json
from ..runtime.engine import Engine
from ..runtime.ort_backend import OnnxRuntime
from ..runtime.trt_backend import TensorRTRuntime
from . import graphs, parity, quantize
from .formats import FORMATS, ExportError, ExportOptions  # noqa: F401 (ExportError re-exported)
from .graphs import set_metadata
from .tensorrt_build import build_engines, require_tensorrt


def _versions() -> dict:
    import importlib.metadata as md

    out = {}
    for name in ("nanovla", "torch", "onnx", "onnxruntime", "ultralytics"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = "not installed"
    return out


def _io_from_onnx(path: str) -> dict:
    import onnx
    from onnx import TensorProto

    names = {TensorProto.FLOAT: "float32", TensorProto.FLOAT16: "float16", TensorProto.INT32: "int32",
             TensorProto.INT64: "int64", TensorProto.INT8: "int8", TensorProto.UINT8: "uint8"}
    graph = onnx.load(path, load_external_data=False).graph

    def conv(values):
        out = []
        for v in values:
            t = v.type.tensor_type
            shape = [d.dim_param if d.dim_param else d.dim_value for d in t.shape.dim]
            out.append({"name": v.name, "shape": shape, "dtype": names.get(t.elem_type, str(t.elem_type))})
        return out

    return {"inputs": conv(graph.input), "outputs": conv(graph.output)}


def out_name(path: str, tmp: str) -> str:
    """A path inside the temporary bundle directory, as it will be named inside the bundle."""
    return os.path.relpath(path, tmp)


def _shown(name: str) -> str:
    return name if not name.startswith(".fp32") else name + " (reference, not kept)"


def _source_name(checkpoint: str) -> str:
    """The checkpoint as bundle.json records it: a model inside the installed package (the shipped
    default) as "nanovla/..." so the shipped bundle does not carry the exporting machine's path."""
    path = os.path.abspath(checkpoint)
    if os.path.commonpath([path, PACKAGE_DIR]) == PACKAGE_DIR:
        return os.path.join("nanovla", os.path.relpath(path, PACKAGE_DIR))
    return path


def _export_time() -> str:
    """Now in UTC, or SOURCE_DATE_EPOCH where set (the reproducible-builds convention: the same
    checkpoint then exports to the same bundle.json and graph metadata)."""
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    when = (datetime.datetime.fromtimestamp(int(epoch), datetime.timezone.utc) if epoch
            else datetime.datetime.now(datetime.timezone.utc))
    return when.isoformat(timespec="seconds")


def _size(path: str) -> str:
    return f"{os.path.getsize(path) / 1e6:.1f} MB"


def export_bundle(checkpoint: str, to: str, out: str, options: ExportOptions | None = None,
                  log: Callable[[str], None] = print) -> dict:
    """Export `checkpoint` as format `to` into the bundle directory `out`; returns bundle.json."""
    if to not in FORMATS:
        raise ExportError(f"unknown format {to!r}; choose one of {', '.join(FORMATS)}")
    fmt = FORMATS[to]
    options = options or ExportOptions()
    options.validate(fmt)
    if fmt.name == "tensorrt":
        require_tensorrt()  # before minutes of export work: a clear line where there is no GPU/TensorRT
    try:
        model, tokenizer, _ = load_checkpoint(checkpoint)
    except CheckpointError as e:
        raise ExportError(str(e)) from None
    started = time.perf_counter()
    result: dict = {}

    def write(tmp: str) -> None:
        result.update(_write_bundle(model, tokenizer, checkpoint, fmt, options, tmp, log))

    atomic_directory_write(out, write)
    log(f"export: wrote {out} ({fmt.name}) in {time.perf_counter() - started:.1f}s")
    return result


def _write_bundle(model, tokenizer, checkpoint, fmt, options: ExportOptions, tmp: str, log) -> dict:
    cfg = model.cfg
    d = cfg.decoder
    producer = {"name": "nanovla export", "format": fmt.name, "versions": _versions(),
                "source_checkpoint": _source_name(checkpoint),
                "source_weights_sha256": weights_digest(checkpoint),
                "exported_at": _export_time()}
    quantized = fmt.precision in ("int8", "fp16")
    fp32_dir = os.path.join(tmp, ".fp32") if quantized else tmp
    os.makedirs(fp32_dir, exist_ok=True)
    tokenizer.save(os.path.join(fp32_dir, "tokenizer.json"))
    metadata = {"producer": f"nanovla {producer['versions']['nanovla']} (torch {producer['versions']['torch']})",
                "source_checkpoint": producer["source_checkpoint"], "exported_at": producer["exported_at"],
                "feed": "see bundle.json: inputs, shapes, dtypes, preprocessing"}
    for graph in GRAPHS:
        t0 = time.perf_counter()
        path = os.path.join(fp32_dir, GRAPH_FILES[graph])
        graphs.export_graph(model, graph, path, {**metadata, "precision": "fp32"})
        graphs.check_graph(path)
        log(f"export: {graph} fp32 -> {_shown(out_name(path, tmp))} ({_size(path)}, {time.perf_counter() - t0:.1f}s)")
    stop_ids = sorted(Engine(model, tokenizer).stop_ids)  # the same stop rule as the torch backend
    base = {
        "model": {"image_height": cfg.vision.image_height, "image_width": cfg.vision.image_width,
                  "image_tokens": cfg.image_tokens, "n_layer": d.n_layer, "n_kv_head": d.n_kv_head,
                  "head_dim": d.n_embd // d.n_head, "n_embd": d.n_embd, "vocab_size": d.vocab_size,
                  "max_seq_len": d.max_seq_len, "image_token_id": model.image_token_id},
        "preprocessing": {"color": "RGB", "resize": [cfg.vision.image_height, cfg.vision.image_width],
                          "interpolation": "INTER_AREA when shrinking, else INTER_LINEAR (OpenCV), no crop",
                          "scale": "1/255", "layout": "NCHW float32 (1, 3, H, W)",
                          "normalisation": "mean/std inside the vision graph",
                          "mean": list(cfg.vision.mean), "std": list(cfg.vision.std)},
        "tokenizer": {**file_entry(fp32_dir, "tokenizer.json"),
                      "fingerprint": tokenizer_fingerprint(os.path.join(fp32_dir, "tokenizer.json")),
                      "special_tokens": tokenizer.special_ids(), "stop_ids": stop_ids,
                      "image_prefix": "<|bos|><|user_start|><|image|>*N (the image context)",
                      "question": "question ids + <|user_end|><|assistant_start|>"},
        "producer": producer,
        "kv_cache": "decode reads a preallocated (B, Hkv, capacity, D) cache per layer with past_length valid "
                    "positions and returns the new positions' keys/values; the caller writes them in",
    }

    def bundle_json(directory: str, precision: str, parity_report: dict) -> dict:
        data = {**base, "precision": precision,
                "graphs": _graph_entries(directory),
                "tokenizer": {**base["tokenizer"], **file_entry(directory, "tokenizer.json")},
                "parity": parity_report}
        write_bundle_json(directory, data)
        return data

    bundle_json(fp32_dir, "fp32", {"status": "pending"})
    rows = parity.eval_rows(options.parity_scenes, options.parity_seed, options.parity_questions)
    t0 = time.perf_counter()
    fp32_runtime = OnnxRuntime(fp32_dir, threads=options.threads or None)
    report = {"fp32_vs_torch": parity.fp32_vs_torch(model, tokenizer, fp32_runtime, rows)}
    r = report["fp32_vs_torch"]
    log(f"parity: fp32 vs torch on {r['scenes']} scenes: vision err {r['vision_max_abs_error']:.1e}, "
        f"logits err {r['logits_max_abs_error']:.1e}, greedy tokens identical on {r['greedy_token_agreement']:.1%} "
        f"({time.perf_counter() - t0:.1f}s)")
    failures = list(r["failures"])
    precision = "fp32"
    if quantized:
        precision = fmt.precision
        shutil.copy(os.path.join(fp32_dir, "tokenizer.json"), os.path.join(tmp, "tokenizer.json"))
        for graph in GRAPHS:
            t0 = time.perf_counter()
            src, dst = os.path.join(fp32_dir, GRAPH_FILES[graph]), os.path.join(tmp, GRAPH_FILES[graph])
            if precision == "fp16":
                quantize.convert_fp16(src, dst)
            elif graph == "vision":
                quantize.quantize_vision_static(src, dst, options.calibration_count, options.calibration_method,
                                                cfg.vision.image_height, cfg.vision.image_width)
            elif graph == "decode":
                quantize.quantize_decoder_nbits(src, dst)
            else:
                quantize.quantize_decoder_dynamic(src, dst)
            _restamp(dst, {**metadata, "precision": precision, "nanovla.graph": graph})
            graphs.check_graph(dst)
            log(f"export: {graph} {precision} -> {_shown(out_name(dst, tmp))} ({_size(dst)}, "
                f"{time.perf_counter() - t0:.1f}s)")
        bundle_json(tmp, precision, {"status": "pending"})
        t0 = time.perf_counter()
        mine = OnnxRuntime(tmp, threads=options.threads or None)
        q = parity.quantized_vs_fp32(precision, fp32_runtime, mine, rows)
        report[f"{precision}_vs_fp32"] = q
        log(f"parity: {precision} vs fp32 on {q['scenes']} scenes: exact match {q[precision]['exact_match']:.3f} vs "
            f"{q['fp32']['exact_match']:.3f}, caption F1 {q[precision]['caption_f1']:.3f} vs "
            f"{q['fp32']['caption_f1']:.3f} "
            f"({time.perf_counter() - t0:.1f}s)")
        failures += q["failures"]
        shutil.rmtree(fp32_dir)
    engines = None
    if fmt.name == "tensorrt":
        engines = build_engines(tmp, base["model"], options, log)
        write_bundle_json(tmp, {**bundle_json(tmp, "fp32", {"status": "pending"}), "engines": engines})
        t0 = time.perf_counter()
        q = parity.quantized_vs_fp32(options.trt_precision, fp32_runtime, TensorRTRuntime(tmp), rows)
        report[f"tensorrt_{options.trt_precision}_vs_fp32"] = q
        log(f"parity: TensorRT {options.trt_precision} vs fp32 on {q['scenes']} scenes: exact match "
            f"{q[options.trt_precision]['exact_match']:.3f} vs {q['fp32']['exact_match']:.3f} "
            f"({time.perf_counter() - t0:.1f}s)")
        failures += q["failures"]
    report["passed"] = not failures
    report["allow_drift"] = options.allow_drift
    if failures and not options.allow_drift:
        raise ExportError("parity outside tolerance: " + "; ".join(failures)
                          + " (use --allow-drift to write it anyway)")
    if failures:
        log("export: WARNING parity outside tolerance (written because of --allow-drift): " + "; ".join(failures))
    data = {**base, "precision": precision if engines is None else f"tensorrt-{options.trt_precision}",
            "graphs": _graph_entries(tmp),
            "tokenizer": {**base["tokenizer"], **file_entry(tmp, "tokenizer.json")},
            "parity": report}
    if engines is not None:
        data["engines"] = engines
    write_bundle_json(tmp, data)
    return data


def _graph_entries(directory: str) -> dict:
    """bundle.json's `graphs`: file, size, digest and I/O (read back from each written graph)."""
    return {g: {**file_entry(directory, GRAPH_FILES[g]), **_io_from_onnx(os.path.join(directory, GRAPH_FILES[g]))}
            for g in GRAPHS}


def _restamp(path: str, metadata: dict) -> None:
    import onnx

    proto = onnx.load(path)
    set_metadata(proto, metadata)
    onnx.save(proto, path)
