"""The TensorRT backend: a bundle's engines (`nanovla export --to tensorrt`) run with the TensorRT
10 Python API and cuda-python device buffers.

Device memory is allocated once: the vision/prefill I/O, one decode KV buffer per layer of the
full context length (1, Hkv, max_seq_len, D) bound at that shape (positions >= past_length are
masked inside the graph), and the step outputs. An image context owns device copies of its
prefix keys/values; each question copies them into the decode buffers (one 2-D copy per
tensor), and each step copies only the new position in. Logits come back to the host for
sampling (V floats per step).

Never run on the development machines (no TensorRT, no GPU). Guarded: without TensorRT,
cuda-python or a GPU, loading gives one line saying which.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

import numpy as np

from ..model.tokenizer import Tokenizer
from .base import Runtime, RuntimeError_, decode_loop
from .bundle import BundleError, read_bundle
from .gpu import cudart, gpu_name
from .preprocess import preprocess
from .sampling import Sampler, SamplingConfig


def _load_cuda():
    try:
        import tensorrt as trt
    except ImportError:
        raise RuntimeError_("backend 'tensorrt' needs TensorRT and an NVIDIA GPU: `tensorrt` is not installed "
                            "here (pip install 'nanovla[tensorrt]' on the robot)") from None

    rt = cudart()
    if rt is None:
        raise RuntimeError_("backend 'tensorrt' needs cuda-python (pip install 'nanovla[tensorrt]')")
    gpu = gpu_name()
    if gpu is None:
        raise RuntimeError_("backend 'tensorrt' needs a CUDA GPU; none is visible here")
    return trt, rt, gpu


def _ok(result):
    """cuda-python returns (err, *values); raise on error, return the values."""
    err, *values = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        raise RuntimeError_(f"CUDA error {err}")
    return values[0] if len(values) == 1 else values


@dataclass
class TrtImageContext:
    cache: list[int]  # device pointers: key/value per layer, (1, Hkv, prefix_len, D) float32
    prefix_len: int
    encode_ms: float = 0.0
    vision_ms: float = 0.0
    meta: dict = field(default_factory=dict)
    owner: object = None  # the runtime, which frees the cache when the context is dropped

    def __del__(self):
        if self.owner is not None:
            self.owner._free(self.cache)


class TensorRTRuntime(Runtime):
    backend = "tensorrt"

    def __init__(self, path: str, device: str = "cuda", threads: int | None = None):
        trt, rt, gpu = _load_cuda()
        try:
            bundle = read_bundle(path)
        except BundleError as e:
            raise RuntimeError_(str(e)) from None
        engines = bundle.get("engines")
        if not engines:
            raise RuntimeError_(f"{path}: bundle has no TensorRT engines (export it with --to tensorrt)")
        if engines["tensorrt_version"] != trt.__version__:
            raise RuntimeError_(f"{path}: engines were built with TensorRT {engines['tensorrt_version']}, this is "
                                f"{trt.__version__}; rebuild them here with `nanovla export --to tensorrt`")
        if engines["gpu"] != gpu:
            raise RuntimeError_(f"{path}: engines were built for {engines['gpu']}, this GPU is {gpu}; "
                                "rebuild them here")
        self.trt, self.rt = trt, rt
        self.logger = trt.Logger(trt.Logger.WARNING)
        runtime = trt.Runtime(self.logger)
        self.engines, self.contexts = {}, {}
        for graph, entry in engines["files"].items():
            with open(os.path.join(path, entry["file"]), "rb") as f:
                engine = runtime.deserialize_cuda_engine(f.read())
            if engine is None:
                raise RuntimeError_(f"{path}/{entry['file']}: TensorRT cannot deserialize it")
            self.engines[graph] = engine
            self.contexts[graph] = engine.create_execution_context()
        m = bundle["model"]
        self.bundle, self.model_path = bundle, path
        self.image_height, self.image_width = m["image_height"], m["image_width"]
        self.n_layer, self.n_kv_head, self.head_dim = m["n_layer"], m["n_kv_head"], m["head_dim"]
        self.max_len, self.vocab = m["max_seq_len"], m["vocab_size"]
        self.image_tokens, self.n_embd = m["image_tokens"], m["n_embd"]
        self.tokenizer = Tokenizer.load(os.path.join(path, bundle["tokenizer"]["file"]))
        self.stop_ids = set(bundle["tokenizer"]["stop_ids"])
        self.prefix = self.tokenizer.image_prefix(self.image_tokens)
        self.stream = _ok(rt.cudaStreamCreate())
        self._pending: list[np.ndarray] = []
        self.kv_row = self.head_dim * 4  # bytes of one position of one head (float32 I/O)
        f32 = 4
        self.buffers = {
            "pixels": self._malloc(3 * self.image_height * self.image_width * f32),
            "image_tokens": self._malloc(self.image_tokens * self.n_embd * f32),
            "input_ids": self._malloc(self.max_len * 4),
            "past_length": self._malloc(4),
            "logits": self._malloc(self.vocab * f32),
        }
        kv_bytes = self.n_kv_head * self.max_len * self.kv_row
        self.past = [self._malloc(kv_bytes) for _ in range(2 * self.n_layer)]  # decode's cache
        self.new = [self._malloc(kv_bytes) for _ in range(2 * self.n_layer)]  # new positions (any graph)
        self.kv_names = [f"{kind}.{i}" for i in range(self.n_layer) for kind in ("key", "value")]
        self.logits_host = np.zeros((1, self.vocab), np.float32)

    # ------------------------------------------------------------------ device helpers
    def _malloc(self, nbytes: int) -> int:
        return int(_ok(self.rt.cudaMalloc(nbytes)))

    def _free(self, pointers) -> None:
        for p in pointers:
            self.rt.cudaFree(p)

    def _h2d(self, device: int, array: np.ndarray) -> None:
        array = np.ascontiguousarray(array)
        _ok(self.rt.cudaMemcpyAsync(device, array.ctypes.data, array.nbytes,
                                    self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice, self.stream))
        self._pending.append(array)  # host arrays must live until the stream synchronises

    def _copy_positions(self, dst: int, dst_len: int, dst_pos: int, src: int, src_len: int, count: int) -> None:
        """Copy `count` positions of every head: src (1, Hkv, src_len, D) -> dst (1, Hkv, dst_len, D) at dst_pos."""
        _ok(self.rt.cudaMemcpy2DAsync(dst + dst_pos * self.kv_row, dst_len * self.kv_row, src, src_len * self.kv_row,
                                      count * self.kv_row, self.n_kv_head,
                                      self.rt.cudaMemcpyKind.cudaMemcpyDeviceToDevice, self.stream))

    def _run(self, graph: str, shapes: dict[str, tuple], addresses: dict[str, int]) -> None:
        context = self.contexts[graph]
        for name, shape in shapes.items():
            context.set_input_shape(name, shape)
        for name, pointer in addresses.items():
            context.set_tensor_address(name, pointer)
        if not context.execute_async_v3(int(self.stream)):
            raise RuntimeError_(f"TensorRT {graph} engine failed to run")

    def _sync(self) -> None:
        _ok(self.rt.cudaStreamSynchronize(self.stream))
        self._pending = []

    def _logits(self) -> np.ndarray:
        _ok(self.rt.cudaMemcpyAsync(self.logits_host.ctypes.data, self.buffers["logits"], self.logits_host.nbytes,
                                    self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost, self.stream))
        self._sync()
        return self.logits_host[0]

    # ------------------------------------------------------------------ interface
    def encode(self, image: np.ndarray) -> TrtImageContext:
        t0 = time.perf_counter()
        b = self.buffers
        self._h2d(b["pixels"], preprocess(image, self.image_height, self.image_width))
        self._run("vision", {"pixels": (1, 3, self.image_height, self.image_width)},
                  {"pixels": b["pixels"], "image_tokens": b["image_tokens"]})
        self._sync()
        vision_ms = (time.perf_counter() - t0) * 1000
        P = len(self.prefix)
        self._h2d(b["input_ids"], np.array([self.prefix], np.int32))
        addresses = {"input_ids": b["input_ids"], "image_tokens": b["image_tokens"], "logits": b["logits"]}
        addresses.update({f"new_{n}": p for n, p in zip(self.kv_names, self.new)})
        self._run("prefill", {"input_ids": (1, P), "image_tokens": (1, self.image_tokens, self.n_embd)}, addresses)
        cache = [self._malloc(self.n_kv_head * P * self.kv_row) for _ in self.new]
        for dst, src in zip(cache, self.new):
            self._copy_positions(dst, P, 0, src, P, P)
        self._sync()
        return TrtImageContext(cache, P, (time.perf_counter() - t0) * 1000, vision_ms, owner=self)

    def _step(self, ids: list[int], past_length: int) -> np.ndarray:
        b = self.buffers
        self._h2d(b["input_ids"], np.array([ids], np.int32))
        self._h2d(b["past_length"], np.array([past_length], np.int32))
        shapes = {"input_ids": (1, len(ids))}
        shapes.update({f"past_{n}": (1, self.n_kv_head, self.max_len, self.head_dim) for n in self.kv_names})
        addresses = {"input_ids": b["input_ids"], "past_length": b["past_length"], "logits": b["logits"]}
        addresses.update({f"past_{n}": p for n, p in zip(self.kv_names, self.past)})
        addresses.update({f"new_{n}": p for n, p in zip(self.kv_names, self.new)})
        self._run("decode", shapes, addresses)
        for dst, src in zip(self.past, self.new):  # only the new positions enter the cache
            self._copy_positions(dst, self.max_len, past_length, src, len(ids), len(ids))
        return self._logits()

    def _generate(self, context, question, max_new_tokens, temperature, top_k, top_p, seed, on_token):
        sampler = Sampler(SamplingConfig(max_new_tokens, temperature, top_k, top_p, seed))  # validates
        prompt = self.tokenizer.question_suffix(question)
        start = context.prefix_len
        if start + len(prompt) + 1 > self.max_len:
            raise ValueError(f"prompt of {len(prompt)} tokens does not fit the context of {self.max_len}")
        for dst, src in zip(self.past, context.cache):
            self._copy_positions(dst, self.max_len, 0, src, start, start)
        for pos, token in enumerate(prompt, start):  # the question, one token at a time
            logits = self._step([token], pos)
        pos = start + len(prompt)
        budget = min(max_new_tokens, self.max_len - pos)
        return decode_loop(logits, lambda token, i: self._step([token], pos + i),
                           sampler, self.stop_ids, budget,
                           on_token, self.tokenizer.decode)

    def decode(self, ids):
        return self.tokenizer.decode(ids)

    def describe_params(self) -> dict:
        return {"backend": self.backend, "model": self.model_path, "precision": self.bundle["precision"],
                "tensorrt": self.bundle["engines"]["tensorrt_version"], "gpu": self.bundle["engines"]["gpu"]}

    def close(self) -> None:
        if getattr(self, "buffers", None):
            self._free(list(self.buffers.values()) + self.past + self.new)
            self.buffers, self.past, self.new = {}, [], []
