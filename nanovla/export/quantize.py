"""int8 and fp16 variants of the fp32 graphs (onnxruntime's quantization tools; nothing installed
at export time).

- decoder (prefill, decode): dynamic int8 quantization — weights int8 per output channel,
  activations quantized per call. No calibration data needed; MatMulInteger runs on onnxruntime
  (TensorRT does not take these graphs: it builds its own int8 from the fp32 graphs). Per-tensor
  weights measured ~10 % faster per decode step but twice the exact-match drop (0.6 vs 0.3 points
  on 797 eval questions, an early align checkpoint), so per-channel it is.
- vision: static QDQ int8 calibrated on generated *train* scenes (never the eval scenes parity
  is measured on), per-channel int8 weights. For onnxruntime the activations are uint8 with a
  zero point (U8S8: measured 2.5x faster than S8S8 on this x86 CPU, 5.9 vs 14.7 ms); for
  TensorRT (`symmetric=True`) they are int8 with zero point 0, which its explicit quantization
  requires. LayerNormalization stays fp32 (its 1-D weight has no channel axis to quantize).
- fp16: every float tensor to fp16 except the I/O that must stay fp32 (pixels in, image tokens,
  logits out); the KV cache is fp16, halving its memory traffic.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile

import numpy as np

from ..data.scenes import generate
from ..runtime.preprocess import preprocess

FP32_IO = ("pixels", "image_tokens", "logits")  # kept fp32 in fp16 graphs


def calibration_pixels(count: int, height: int, width: int, seed: int = 1234):
    """(1, 3, H, W) float32 frames from generated train scenes, preprocessed like the runtime."""
    for i in range(count):
        image, _ = generate("train", seed, i)
        yield preprocess(image, height, width)


def quantize_decoder_dynamic(src: str, dst: str) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with _quiet():
        quantize_dynamic(src, dst, op_types_to_quantize=["MatMul", "Gemm"], per_channel=True,
                         weight_type=QuantType.QInt8)


@contextlib.contextmanager
def _quiet():
    """onnxruntime's quantizer logs advice through the root logger; hide it for the call only."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


VISION_QUANTIZED_OPS = ["Conv", "MatMul", "Gemm", "Add", "Mul", "Concat", "MaxPool", "Resize", "AveragePool",
                        "Sigmoid", "Split", "Slice"]


def quantize_vision_static(src: str, dst: str, count: int, method: str, height: int, width: int,
                           symmetric: bool = False) -> None:
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
               "percentile": CalibrationMethod.Percentile}

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.frames = calibration_pixels(count, height, width)

        def get_next(self):
            pixels = next(self.frames, None)
            return None if pixels is None else {"pixels": pixels}

    work = tempfile.mkdtemp(prefix="nanovla-calib-")
    try:
        prepared = os.path.join(work, "prepared.onnx")
        quant_pre_process(src, prepared, skip_symbolic_shape=True)
        cwd = os.getcwd()
        os.chdir(work)  # the calibrator writes augmented_model.onnx into the working directory
        try:
            with _quiet():
                quantize_static(prepared, dst, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                                op_types_to_quantize=VISION_QUANTIZED_OPS,
                                activation_type=QuantType.QInt8 if symmetric else QuantType.QUInt8,
                                weight_type=QuantType.QInt8, calibrate_method=methods[method],
                                extra_options={"ActivationSymmetric": symmetric, "WeightSymmetric": True})
        finally:
            os.chdir(cwd)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def convert_fp16(src: str, dst: str) -> None:
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = onnx.load(src)
    names = {t.name for t in list(model.graph.input) + list(model.graph.output)}
    keep = [n for n in FP32_IO if n in names]
    converted = convert_float_to_float16(model, keep_io_types=keep)
    topological_sort(converted.graph)  # the converter appends the I/O casts at the end
    onnx.save(converted, dst)


def topological_sort(graph) -> None:
    """Reorder graph.node so every node follows the producers of its inputs (in place)."""
    available = {t.name for t in graph.initializer} | {i.name for i in graph.input} | {""}
    pending, ordered = list(graph.node), []
    while pending:
        ready = [n for n in pending if all(i in available for i in n.input)]
        if not ready:
            raise ValueError("graph has a cycle or an input no node produces")
        for node in ready:
            available.update(node.output)
        ordered += ready
        ready_ids = {id(n) for n in ready}
        pending = [n for n in pending if id(n) not in ready_ids]
    copies = [type(n)() for n in ordered]
    for copy, node in zip(copies, ordered):
        copy.CopyFrom(node)
    del graph.node[:]
    graph.node.extend(copies)


def initializer_bytes(path: str) -> int:
    """Bytes of the graph's weights (what a memory-bound decode step must read)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(path)
    return int(sum(numpy_helper.to_array(t).nbytes for t in model.graph.initializer))


def graph_flops(path: str) -> int:
    """Multiply-add FLOPs (2 per MAC) of Conv / MatMul / Gemm nodes at batch 1. Shapes come from
    running the graph once (static shape inference stops at the encoder's dynamic Split sizes)."""
    import onnx
    import onnxruntime as ort
    from onnx import numpy_helper

    model = onnx.load(path)
    weights = {t.name: list(numpy_helper.to_array(t).shape) for t in model.graph.initializer}
    counted = [n for n in model.graph.node if n.op_type in ("Conv", "MatMul", "Gemm")]
    wanted = sorted({i for n in counted for i in list(n.input[:2]) + [n.output[0]] if i and i not in weights})
    existing = {o.name for o in model.graph.output}
    for name in wanted:
        if name not in existing:
            model.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    feed = {}
    for i in session.get_inputs():
        shape = [d if isinstance(d, int) else 1 for d in i.shape]
        feed[i.name] = np.zeros(shape, np.int32 if "int32" in i.type else np.float32)
    names = [o.name for o in session.get_outputs()]
    shapes = {**weights, **{n: list(v.shape) for n, v in zip(names, session.run(None, feed))}}
    flops = 0
    for node in counted:
        a, b, out = shapes.get(node.input[0]), shapes.get(node.input[1]), shapes.get(node.output[0])
        if not (a and b and out):
            continue
        if node.op_type == "Conv":
            flops += 2 * int(np.prod(out)) * int(np.prod(b[1:]))
        else:
            inner = a[-2] if node.op_type == "Gemm" and _attr(node, "transA") else a[-1]
            flops += 2 * int(np.prod(out)) * inner
    return flops


def _attr(node, name):
    for a in node.attribute:
        if a.name == name:
            return a.i
    return 0
