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
from .preprocess import check_rgb, preprocess
from ..model.tokenizer import Tokenizer, check_question
from .base import Answer, Runtime, RuntimeError_, batch_decode_loop, decode_loop
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


def default_cpu_threads(provider: str, cpus: int | None = None) -> int | None:
    """Intra-op threads when none are asked for: 1 on a machine with at most 2 logical CPUs, else
    onnxruntime's own default (None). Measured on a 2-vCPU AMD EPYC, describe p50 of the shipped
    int8 bundle: 1 thread 25.7 ms, 2 threads 76.7 ms, onnxruntime's default 39.8 ms (README)."""
    cpus = os.cpu_count() if cpus is None else cpus
    return 1 if provider == "cpu" and (cpus or 1) <= 2 else None


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
        threads = threads or default_cpu_threads(provider_key)
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
        run, step_ids, step_pos, step_logits, step_new, _keep = self._decode_binding(buffers, 1)

        def step(token: int, pos: int) -> np.ndarray:
            step_ids[0, 0] = token
            step_pos[0] = pos
            run()
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

    # ------------------------------------------------------------------ several frames in one pass
    def encode_batch(self, images: list[np.ndarray]) -> list[OrtImageContext]:
        """One vision call for all frames (the graph's batch dimension is dynamic; its int8 is
        static QDQ, so each frame's image tokens equal encode()'s exactly)."""
        if not images:
            return []
        t0 = time.perf_counter()
        pixels = np.concatenate([preprocess(check_rgb(image), self.image_height, self.image_width)
                                 for image in images]).astype(self.vision_dtype, copy=False)
        image_tokens = self.sessions["vision"].run(None, {"pixels": pixels})[0]
        vision_ms = (time.perf_counter() - t0) * 1000
        return [OrtImageContext(image_tokens[r:r + 1], None, len(self.prefix), vision_ms, vision_ms)
                for r in range(len(images))]

    def generate_batch(self, contexts, question, *, max_new_tokens=64, temperature=0.0, top_k=0, top_p=1.0,
                       seed=None, cancel=None):
        """All contexts in one pass: one prefill call over prefix + question for every row (a row's
        cached prefix is not reused: the rows share one prefill), then decode steps of all rows
        together, each row stopping at its own stop token. The decode graph takes a batch of rows
        at one shared past_length, which holds here because every row has the same prompt."""
        if not contexts:
            return []
        if not self.decodes_rows_together(len(contexts)):  # each row as generate() runs it alone
            return super().generate_batch(contexts, question, max_new_tokens=max_new_tokens, temperature=temperature,
                                          top_k=top_k, top_p=top_p, seed=seed, cancel=cancel)
        rows = len(contexts)
        samplers = [Sampler(SamplingConfig(max_new_tokens, temperature, top_k, top_p,  # validates
                                           None if seed is None else seed + r)) for r in range(rows)]
        prompt = self.tokenizer.question_suffix(check_question(question))
        start = len(self.prefix)
        if start + len(prompt) + 1 > self.max_len:
            raise ValueError(f"prompt of {len(prompt)} tokens does not fit the context of {self.max_len}")
        t0 = time.perf_counter()
        budget = min(max_new_tokens, self.max_len - start - len(prompt))
        filled = start + len(prompt)
        ids = np.array([self.prefix + prompt] * rows, dtype=np.int32)
        image_tokens = np.concatenate([c.image_tokens for c in contexts]).astype(self.image_dtype, copy=False)
        outputs = self.sessions["prefill"].run(None, {"input_ids": ids, "image_tokens": image_tokens})
        buffers = [np.zeros((rows, self.n_kv_head, filled + budget, self.head_dim), dtype=self.kv_dtype)
                   for _ in range(2 * self.n_layer)]
        for buf, kv in zip(buffers, outputs[1:]):
            buf[:, :, :filled] = kv
        for r, context in enumerate(contexts):
            if context.cache is None:  # later questions about this frame reuse its prefix
                context.cache = [np.ascontiguousarray(kv[r:r + 1, :, :start]) for kv in outputs[1:]]
        first_ms = (time.perf_counter() - t0) * 1000
        run, step_ids, step_pos, step_logits, step_new, _keep = self._decode_binding(buffers, rows)

        def step(tokens: np.ndarray, i: int) -> np.ndarray:
            step_ids[:, 0] = tokens
            step_pos[0] = filled + i
            run()
            for buf, new in zip(buffers, step_new):
                buf[:, :, filled + i] = new[:, :, 0]
            return step_logits

        tokens, stopped = batch_decode_loop(outputs[0], step, lambda r, logits: samplers[r](logits), self.stop_ids,
                                            budget, cancel)
        latency = (time.perf_counter() - t0) * 1000
        return [Answer(self.decode(t).strip(), t, latency, 0.0, first_ms, stopped) for t in tokens]

    def decodes_rows_together(self, rows: int) -> bool:
        """Whether generate_batch runs `rows` frames through the decoder graphs together. The int8
        bundle's decoder graphs quantize activations dynamically, one scale per tensor over every
        row, so a row's logits there depend on the other rows' values: with batch_decode "auto"
        those rows are decoded one at a time (greedy answers equal describe()'s); float bundles
        batch (each row's arithmetic is its own)."""
        if rows < 2 or self.batch_decode == "never":
            return False
        return self.batch_decode == "always" or self.bundle["precision"] != "int8"

    def _decode_binding(self, buffers: list[np.ndarray], rows: int):
        """The decode graph bound once (IO binding) to `buffers` and to step arrays of `rows` rows:
        (run, input_ids (rows, 1), past_length (1,), logits (rows, V), new kv per layer, OrtValues
        to keep alive)."""
        session = self.sessions["decode"]
        step_ids = np.zeros((rows, 1), dtype=np.int32)
        step_pos = np.zeros((1,), dtype=np.int32)
        step_logits = np.zeros((rows, self.bundle["model"]["vocab_size"]), dtype=np.float32)
        step_new = [np.zeros((rows, self.n_kv_head, 1, self.head_dim), dtype=self.kv_dtype) for _ in buffers]
        binding = session.io_binding()
        keep = []
        for name, array in [("input_ids", step_ids), ("past_length", step_pos), *zip(self.past_names, buffers)]:
            value = self.ort.OrtValue.ortvalue_from_numpy(array)
            keep.append(value)
            binding.bind_ortvalue_input(name, value)
        for name, array in [("logits", step_logits), *zip(self.new_names, step_new)]:
            value = self.ort.OrtValue.ortvalue_from_numpy(array)
            keep.append(value)
            binding.bind_ortvalue_output(name, value)
        return (lambda: session.run_with_iobinding(binding)), step_ids, step_pos, step_logits, step_new, keep

    def decode(self, ids):
        return self.tokenizer.decode(ids)

    def close(self) -> None:
        self.sessions = {}
