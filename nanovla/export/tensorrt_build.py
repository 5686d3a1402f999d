"""TensorRT engines from a bundle's fp32 ONNX graphs, with the TensorRT Python API (10.x).

- precision fp16: every engine with BuilderFlag.FP16.
- precision int8: the vision graph is quantized to QDQ (static, calibrated on generated scenes,
  symmetric: TensorRT explicit quantization) and built with INT8 + FP16; the decoder engines
  are fp16 (int8 decoder weights in TensorRT need weight-only quantization, not done here).
- one optimization profile per engine over the dynamic batch / sequence / past_sequence dims.
- a timing cache, reused and updated across builds (inside the bundle unless --timing-cache).
- the engine's TensorRT version and GPU are recorded in bundle.json: an engine runs only on the
  TensorRT version and GPU model it was built for.

Never run on the development machines (no TensorRT, no GPU): `require_tensorrt` gives the one
line saying so. See the README for what was and was not run.
"""

from __future__ import annotations

import os
import time

from ..runtime.bundle import GRAPHS, file_entry
from ..runtime.gpu import cudart, gpu_name
from .formats import ExportError
from .quantize import quantize_vision_static


def require_tensorrt():
    """The tensorrt module, or a one-line error saying what is missing."""
    try:
        import tensorrt as trt
    except ImportError:
        raise ExportError("--to tensorrt needs TensorRT and an NVIDIA GPU: `tensorrt` is not installed here "
                     "(pip install 'nanovla[tensorrt]' on the GPU machine or robot)") from None
    if cudart() is None:
        raise ExportError("--to tensorrt needs cuda-python for device memory (pip install 'nanovla[tensorrt]')")
    if gpu_name() is None:
        raise ExportError("--to tensorrt needs a CUDA GPU; none is visible here")
    return trt


def profile_shapes(graph: str, model: dict, max_batch: int) -> dict[str, tuple[tuple, tuple, tuple]]:
    """min / opt / max shape of every dynamic input of a graph."""
    prefix = 2 + model["image_tokens"]
    max_len = model["max_seq_len"]
    kv = lambda lo, opt, hi: ((1, model["n_kv_head"], lo, model["head_dim"]),  # noqa: E731
                              (1, model["n_kv_head"], opt, model["head_dim"]),
                              (max_batch, model["n_kv_head"], hi, model["head_dim"]))
    if graph == "vision":
        chw = (3, model["image_height"], model["image_width"])
        return {"pixels": ((1, *chw), (1, *chw), (max_batch, *chw))}
    n, c = model["image_tokens"], model["n_embd"]
    if graph == "prefill":
        return {"input_ids": ((1, 1), (1, prefix), (max_batch, max_len)),
                "image_tokens": ((1, n, c), (1, n, c), (max_batch, n, c))}
    shapes = {"input_ids": ((1, 1), (1, 1), (max_batch, 1))}  # decode takes one token per step
    for i in range(model["n_layer"]):
        for kind in ("key", "value"):
            shapes[f"past_{kind}.{i}"] = kv(1, prefix + 64, max_len)
    return shapes


def build_engine(trt, onnx_path: str, plan_path: str, shapes: dict, fp16: bool, int8: bool,
                 workspace_gb: float, cache_path: str, log) -> None:
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # TensorRT 10: explicit batch is the only mode
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(onnx_path):
        errors = "; ".join(str(parser.getExportError(i)) for i in range(parser.num_errors))
        raise ExportError(f"{onnx_path}: TensorRT cannot parse it: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
    cache_bytes = b""
    if os.path.isfile(cache_path):
        with open(cache_path, "rb") as f:
            cache_bytes = f.read()
    timing_cache = config.create_timing_cache(cache_bytes)
    config.set_timing_cache(timing_cache, ignore_mismatch=False)
    if fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    if int8:
        config.set_flag(trt.BuilderFlag.INT8)  # explicit quantization: scales come from the QDQ nodes
    profile = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        if tensor.name in shapes:
            profile.set_shape(tensor.name, *shapes[tensor.name])
        elif any(d < 0 for d in tensor.shape):
            raise ExportError(f"{onnx_path}: dynamic input {tensor.name} {tuple(tensor.shape)} has no profile")
    config.add_optimization_profile(profile)
    t0 = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ExportError(f"{onnx_path}: TensorRT engine build failed (see the TensorRT log above)")
    with open(plan_path, "wb") as f:
        f.write(serialized)
    with open(cache_path, "wb") as f:
        f.write(config.get_timing_cache().serialize())
    log(f"export: {os.path.basename(plan_path)} built in {time.perf_counter() - t0:.1f}s "
        f"({os.path.getsize(plan_path) / 1e6:.1f} MB)")


def build_engines(bundle_dir: str, model: dict, options, log) -> dict:
    """Build vision/prefill/decode .plan files into bundle_dir; the `engines` section of bundle.json."""
    trt = require_tensorrt()
    cache_path = options.timing_cache or os.path.join(bundle_dir, "timing.cache")
    int8 = options.trt_precision == "int8"
    precisions, files = {}, {}
    for graph in GRAPHS:
        source = os.path.join(bundle_dir, f"{graph}.onnx")
        if graph == "vision" and int8:
            qdq = os.path.join(bundle_dir, "vision.qdq.onnx")
            quantize_vision_static(source, qdq, options.calibration_count, options.calibration_method,
                                   model["image_height"], model["image_width"], symmetric=True)
            source = qdq
        plan = f"{graph}.plan"
        build_engine(trt, source, os.path.join(bundle_dir, plan), profile_shapes(graph, model, options.max_batch),
                     fp16=True, int8=int8 and graph == "vision", workspace_gb=options.workspace_gb,
                     cache_path=cache_path, log=log)
        precisions[graph] = "int8" if int8 and graph == "vision" else "fp16"
        files[graph] = file_entry(bundle_dir, plan)
    return {"tensorrt_version": trt.__version__, "gpu": gpu_name(), "precision": precisions, "files": files,
            "max_batch": options.max_batch,
            "profiles": {g: {k: [list(s) for s in v] for k, v in profile_shapes(g, model, options.max_batch).items()}
                         for g in GRAPHS},
            "timing_cache": os.path.basename(cache_path) if not options.timing_cache else options.timing_cache,
            "calibration": {"count": options.calibration_count, "method": options.calibration_method} if int8 else None}
