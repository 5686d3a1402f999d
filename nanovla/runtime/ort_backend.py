"""The onnxruntime backend: runs an exported bundle with onnxruntime, numpy, tokenizers and OpenCV
only (no PyTorch on the robot).

Image context: `encode` runs the vision graph; the first question about the image runs the
prefill graph over prefix + question in one call, and the prefix's keys/values are kept as the
context's cache. Later questions copy that cache in and feed their tokens to the decode graph.

Decode loop: each generate call allocates one zeroed KV buffer per layer, (1, Hkv, capacity, D),
fills it once, and binds it to the decode graph with IO binding (on CPU the OrtValue wraps the
numpy memory: no copy). Each step writes its token id and position into bound arrays, runs, and
copies only the new position's key and value (Hkv * D numbers per layer) into the buffer. The
whole cache is never copied per step.
On the CUDA / TensorRT providers the bound CPU buffers are copied to the device by onnxruntime
each step (a device-resident cache would need a device-side slice write; see the README).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

import numpy as np

from .bundle import BundleError, check_io, is_bundle, ort_io, read_bundle
from ..preprocess import preprocess
from ..tokenizer import Tokenizer
from .base import Runtime, RuntimeError_, decode_loop
from .sampling import Sampler, SamplingConfig

PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider"}


@dataclass
class OrtImageContext:
    image_tokens: np.ndarray  # (1, N, C)
    cache: list[np.ndarray] | None  # key, value per layer: (1, Hkv, prefix_len, D); None until the first question
    prefix_len: int
    encode_ms: float = 0.0  # vision (+ prefix prefill when done at encode)
    vision_ms: float = 0.0  # vision graph alone
    meta: dict = field(default_factory=dict)


class OnnxRuntime(Runtime):
    backend = "onnxruntime"

    def __init__(self, path: str, device: str = "cpu", threads: int | None = None, provider: str | None = None,
                 check_digests: bool = True):
        try:
            import onnxruntime as ort
        except ImportError:
            raise RuntimeError_("backend 'onnxruntime' needs the onnxruntime package "
                                "(pip install onnxruntime; `pip install nanovla` brings it)") from None
        if not is_bundle(path):
            raise RuntimeError_(f"{path}: the onnxruntime backend runs an exported bundle (make one with "
                                f"`nanovla export {path} --to onnx-int8`)")
        try:
            self.bundle = read_bundle(path, check_digests=check_digests)
        except BundleError as e:
            raise RuntimeError_(str(e)) from None
        # --device cuda -> CUDA provider, --device tensorrt -> TensorRT provider (CLI has no --provider)
        provider_key = provider or ("cuda" if device.startswith("cuda") else
                                    "tensorrt" if device == "tensorrt" else "cpu")
        if provider_key not in PROVIDERS:
            raise RuntimeError_(f"unknown provider {provider_key!r}; choose one of {', '.join(PROVIDERS)}")
        wanted = PROVIDERS[provider_key]
        if wanted not in ort.get_available_providers():
            raise RuntimeError_(f"onnxruntime here has no {wanted} "
                                f"(available: {', '.join(ort.get_available_providers())})")
        providers = [wanted] if wanted == "CPUExecutionProvider" else [wanted, "CPUExecutionProvider"]
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.inter_op_num_threads = 1
        if threads:
            options.intra_op_num_threads = threads
        options.log_severity_level = 3
        self.ort = ort
        self.sessions = {}
        for graph, spec in self.bundle["graphs"].items():
            file = os.path.join(path, spec["file"])
            try:
                session = ort.InferenceSession(file, options, providers=providers)
            except Exception as e:  # onnxruntime raises its own Fail/InvalidGraph types
                raise RuntimeError_(f"{file}: onnxruntime cannot load it ({str(e).splitlines()[0]})") from None
            try:
                check_io(graph, spec, *ort_io(session))
            except BundleError as e:
                raise RuntimeError_(f"{file}: {e}") from None
            self.sessions[graph] = session
        m = self.bundle["model"]
        self.model_path = path
        self.provider = wanted
        self.threads = threads
        self.image_height, self.image_width = m["image_height"], m["image_width"]
        self.n_layer, self.n_kv_head, self.head_dim = m["n_layer"], m["n_kv_head"], m["head_dim"]
        self.max_len = m["max_seq_len"]
        self.image_tokens = m["image_tokens"]
        self.tokenizer = Tokenizer.load(os.path.join(path, self.bundle["tokenizer"]["file"]))
        self.stop_ids = set(self.bundle["tokenizer"]["stop_ids"])
        self.prefix = self.tokenizer.image_prefix(self.image_tokens)
        decode_inputs = self.bundle["graphs"]["decode"]["inputs"]
        self.past_names = [t["name"] for t in decode_inputs[2:]]
        self.kv_dtype = np.dtype(decode_inputs[2]["dtype"])
        self.new_names = [t["name"] for t in self.bundle["graphs"]["decode"]["outputs"][1:]]
        self.vision_dtype = np.dtype(self.bundle["graphs"]["vision"]["inputs"][0]["dtype"])
        self.image_dtype = np.dtype(self.bundle["graphs"]["prefill"]["inputs"][1]["dtype"])

    def describe_params(self) -> dict:
        return {"backend": self.backend, "model": self.model_path, "precision": self.bundle["precision"],
                "provider": self.provider, "threads": self.threads}

    # ------------------------------------------------------------------ encode
    def encode(self, image: np.ndarray) -> OrtImageContext:
        """Vision only: the prefix prefill is deferred to the first question, which is fused into
        it (one prefill call over prefix + question instead of one decode step per question
        token); its first positions are kept as the context's cache for later questions."""
        t0 = time.perf_counter()
        pixels = preprocess(image, self.image_height, self.image_width).astype(self.vision_dtype, copy=False)
        image_tokens = self.sessions["vision"].run(None, {"pixels": pixels})[0]
        vision_ms = (time.perf_counter() - t0) * 1000
        return OrtImageContext(image_tokens, None, len(self.prefix), vision_ms, vision_ms)

    def encode_tokens(self, image_tokens: np.ndarray) -> OrtImageContext:
        """The image context with its prefix prefilled now, from image tokens already computed."""
        t0 = time.perf_counter()
        outputs = self._prefill(self.prefix, image_tokens)
        return OrtImageContext(image_tokens, outputs[1:], len(self.prefix), (time.perf_counter() - t0) * 1000)

    def _prefill(self, ids: list[int], image_tokens: np.ndarray) -> list[np.ndarray]:
        feed = {"input_ids": np.array([ids], dtype=np.int32),
                "image_tokens": image_tokens.astype(self.image_dtype, copy=False)}
        return self.sessions["prefill"].run(None, feed)

    # ------------------------------------------------------------------ generate
    def _generate(self, context, question, max_new_tokens, temperature, top_k, top_p, seed, on_token):
        sampler = Sampler(SamplingConfig(max_new_tokens, temperature, top_k, top_p, seed))  # validates
        prompt = self.tokenizer.question_suffix(question)
        start = context.prefix_len
        if start + len(prompt) + 1 > self.max_len:
            raise ValueError(f"prompt of {len(prompt)} tokens does not fit the context of {self.max_len}")
        budget = min(max_new_tokens, self.max_len - start - len(prompt))
        capacity = start + len(prompt) + budget
        session = self.sessions["decode"]
        # the preallocated cache; zeros, because masked positions still meet 0 * value in the graph
        buffers = [np.zeros((1, self.n_kv_head, capacity, self.head_dim), dtype=self.kv_dtype)
                   for _ in range(2 * self.n_layer)]
        first_logits = None
        if context.cache is None:  # the first question about this image: prefix + question in one call
            outputs = self._prefill(self.prefix + prompt, context.image_tokens)
            context.cache = [np.ascontiguousarray(kv[:, :, :start]) for kv in outputs[1:]]
            for buf, kv in zip(buffers, outputs[1:]):
                buf[:, :, :start + len(prompt)] = kv
            first_logits = outputs[0][0]
        else:
            for buf, prefix_kv in zip(buffers, context.cache):
                buf[:, :, :start] = prefix_kv
        # every input and output bound once to preallocated arrays; a step writes the token and
        # its position into the bound arrays, runs, and copies the one new position into the cache
        step_ids = np.zeros((1, 1), dtype=np.int32)
        step_pos = np.zeros((1,), dtype=np.int32)
        step_logits = np.zeros((1, self.bundle["model"]["vocab_size"]), dtype=np.float32)
        step_new = [np.zeros((1, self.n_kv_head, 1, self.head_dim), dtype=self.kv_dtype) for _ in buffers]
        binding = session.io_binding()
        keep = []  # OrtValues must outlive the binding
        for name, array in [("input_ids", step_ids), ("past_length", step_pos), *zip(self.past_names, buffers)]:
            value = self.ort.OrtValue.ortvalue_from_numpy(array)
            keep.append(value)
            binding.bind_ortvalue_input(name, value)
        for name, array in [("logits", step_logits), *zip(self.new_names, step_new)]:
            value = self.ort.OrtValue.ortvalue_from_numpy(array)
            keep.append(value)
            binding.bind_ortvalue_output(name, value)

        def step(token: int, pos: int) -> np.ndarray:
            step_ids[0, 0] = token
            step_pos[0] = pos
            session.run_with_iobinding(binding)
            for buf, new in zip(buffers, step_new):
                buf[:, :, pos] = new[:, :, 0]
            return step_logits[0]

        if first_logits is None:
            for pos, token in enumerate(prompt, start):  # the question, one token at a time
                logits = step(token, pos)
        else:
            logits = first_logits
        pos = start + len(prompt)
        return decode_loop(logits, lambda token, i: step(token, pos + i),
                           sampler, self.stop_ids, budget,
                           on_token, self.tokenizer.decode)

    def decode(self, ids):
        return self.tokenizer.decode(ids)

    def close(self) -> None:
        self.sessions = {}
