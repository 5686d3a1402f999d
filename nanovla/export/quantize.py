"""int8 and fp16 variants of the fp32 graphs (onnxruntime's quantization tools, and a numpy packer for
MatMulNBits; nothing installed at export time).

- prefill: dynamic int8 quantization — weights int8 per output channel, activations quantized
  per call. No calibration data needed; MatMulInteger runs on onnxruntime (TensorRT does not take
  these graphs: it builds its own int8 from the fp32 graphs). Per-tensor weights measured ~10 %
  faster per decode step but twice the exact-match drop (0.6 vs 0.3 points on 797 eval
  questions, an early align checkpoint), so per-channel it is.
- decode: weight-only int8 `MatMulNBits` (onnxruntime contrib op; `quantize_decoder_nbits`):
  weights int8 in blocks of 128 along K with one fp32 scale per block (symmetric, no zero
  points), accuracy_level 4 (MLAS quantizes the activation row per block to int8 and runs an
  int8 GEMV). Measured on the shipped weights, 2-core EPYC, 1 thread, one decode step at a
  70-token cache, ratios interleaved in one process: 0.78-0.81x the time of the dynamic int8
  step, and logits nearer fp32 (max abs error 0.16 vs 0.26). Block 32 / 64: 0.83-0.91x /
  0.86x (errors 0.07 / 0.11); 4-bit block 128: 0.75-0.77x but error 0.63 (not worth the
  bytes it saves on a 5 MB model); accuracy_level 0 (fp32 compute): 8-bit ~40x slower (no
  kernel: dequantizes), 4-bit 1.4x slower. The prefill graph keeps dynamic int8: at ~60 rows
  MatMulNBits measured 1.9x slower than DynamicQuantizeMatMul (4.9 vs 2.5 ms).
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


NBITS = 8  # decode graph: weight-only int8 ...
NBITS_BLOCK = 128  # ... in blocks of 128 along K (see the module docstring for the measurements)
NBITS_ACCURACY = 4  # int8 compute (MLAS); 0 would dequantize to fp32 (8-bit: no kernel, ~40x slower)


def pack_nbits(weight: np.ndarray, bits: int = NBITS, block_size: int = NBITS_BLOCK) -> tuple[np.ndarray, np.ndarray]:
    """A MatMul weight (K, N) -> MatMulNBits' B (N, K blocks, block_size * bits / 8) uint8 and
    scales (N * K blocks,) float32, symmetric: code = round(w / scale) + 2^(bits-1), clipped to
    the code range, scale = max |w| of the block / (2^(bits-1) - 1); the op's default zero point
    2^(bits-1) undoes the offset, so no zero points are stored. K is zero-padded to whole blocks.
    4-bit codes are packed two to a byte, the lower K index in the low nibble."""
    if bits not in (4, 8) or block_size < 16 or block_size & (block_size - 1):
        raise ValueError(f"MatMulNBits: bits 4 or 8 and a power-of-two block_size >= 16 (got {bits}, {block_size})")
    k, n = weight.shape
    blocks = -(-k // block_size)
    w = np.zeros((n, blocks * block_size), np.float32)
    w[:, :k] = weight.T
    w = w.reshape(n, blocks, block_size)
    half = 1 << (bits - 1)
    scale = np.abs(w).max(axis=-1) / (half - 1)
    scale[scale == 0] = 1.0  # an all-zero block: any scale gives codes of 0
    codes = (np.clip(np.rint(w / scale[..., None]), -half, half - 1) + half).astype(np.uint8)
    if bits == 4:
        codes = codes[..., 0::2] | (codes[..., 1::2] << 4)
    return np.ascontiguousarray(codes), scale.astype(np.float32).reshape(-1)


def quantize_decoder_nbits(src: str, dst: str, bits: int = NBITS, block_size: int = NBITS_BLOCK,
                           accuracy_level: int = NBITS_ACCURACY) -> int:
    """Every MatMul whose B is a 2-D weight becomes a com.microsoft MatMulNBits node (pure numpy,
    see pack_nbits); returns how many. Other nodes and weights stay fp32."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(src)
    graph = model.graph
    weights = {t.name: t for t in graph.initializer}
    uses: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            uses[name] = uses.get(name, 0) + 1
    nodes, replaced, dropped = [], 0, set()
    for node in graph.node:
        b = node.input[1] if node.op_type == "MatMul" else ""
        if b not in weights or len(weights[b].dims) != 2:
            nodes.append(node)
            continue
        w = numpy_helper.to_array(weights[b]).astype(np.float32)
        codes, scales = pack_nbits(w, bits, block_size)
        graph.initializer.extend([numpy_helper.from_array(codes, f"{b}_q{bits}"),
                                  numpy_helper.from_array(scales, f"{b}_scales")])
        nodes.append(helper.make_node("MatMulNBits", [node.input[0], f"{b}_q{bits}", f"{b}_scales"],
                                      list(node.output), name=(node.name or b) + "_nbits", domain="com.microsoft",
                                      K=w.shape[0], N=w.shape[1], bits=bits, block_size=block_size,
                                      accuracy_level=accuracy_level))
        replaced += 1
        uses[b] -= 1
        if uses[b] == 0:
            dropped.add(b)
    del graph.node[:]
    graph.node.extend(nodes)
    kept = [t for t in graph.initializer if t.name not in dropped]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    if not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    onnx.save(model, dst)
    return replaced


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
