"""One thread that owns the model: jobs arrive through a bounded queue and run one at a time.

The HTTP handlers never touch the runtime. They submit a `Job` (or are told the queue is full at
once, so the server answers 503 instead of letting latency grow without bound) and await its
future; a streaming handler also gets each new piece of text through `on_text`, called from this
thread. Image contexts (the encoded image and its cached prefix) are kept in a small LRU keyed by
the image's bytes, so several questions about one image encode it once.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import queue
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from ..runtime.preprocess import check_rgb, decode_image
from ..runtime import Runtime


class QueueFull(Exception):
    """Every queue slot is taken; the caller should answer 503 and the client retry later."""


def image_key(data: bytes) -> str:
    """The context cache's key: a digest of the encoded image bytes (same bytes, same context)."""
    return hashlib.sha256(data).hexdigest()


def decode_checked(data: bytes) -> np.ndarray:
    """Encoded PNG/JPEG/... bytes -> (H, W, 3) uint8 RGB; an ImageError (a ValueError) otherwise."""
    return check_rgb(decode_image(data))


@dataclass
class Job:
    key: str  # image_key(image_bytes)
    image_bytes: bytes
    question: str
    sampling: dict  # max_new_tokens, temperature, top_p, seed (Runtime.generate keywords)
    rgb: np.ndarray | None = None  # decoded already (None when the handler found the context cached)
    on_text: Callable[[str], None] | None = None  # the answer so far, after every token (streaming)
    cancelled: threading.Event = field(default_factory=threading.Event)  # set when the client went away
    future: concurrent.futures.Future = field(default_factory=concurrent.futures.Future)
    queued_at: float = field(default_factory=time.perf_counter)


@dataclass
class Result:
    text: str
    completion_tokens: int
    finish_reason: str  # "stop" or "length" (OpenAI's names)
    latency_ms: float  # encode (when it ran) + generation
    encode_ms: float  # 0 when the image's context came from the cache
    queue_ms: float  # waiting for the worker
    image_cached: bool


class ModelWorker:
    def __init__(self, runtime: Runtime, queue_size: int = 64, cache_size: int = 16):
        if queue_size < 1 or cache_size < 1:
            raise ValueError("queue_size and cache_size must be >= 1")
        self.runtime = runtime
        self.queue: queue.Queue[Job | None] = queue.Queue(maxsize=queue_size)
        self.cache_size = cache_size
        self._contexts: OrderedDict[str, Any] = OrderedDict()  # key -> image context, least recent first
        self._lock = threading.Lock()  # guards _contexts (read by handlers, written by the worker)
        self.busy = False  # a job is running now
        self.served = 0
        self.failed = 0
        self._thread = threading.Thread(target=self._run, name="nanovla-model-worker", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ handler side
    def has_context(self, key: str) -> bool:
        with self._lock:
            return key in self._contexts

    def submit(self, job: Job) -> concurrent.futures.Future:
        try:
            self.queue.put_nowait(job)
        except queue.Full:
            raise QueueFull(f"the model's queue is full ({self.queue.maxsize} requests waiting); retry shortly") from None
        return job.future

    def idle(self) -> bool:
        return not self.busy and self.queue.empty()

    def stats(self) -> dict:
        with self._lock:
            cached = len(self._contexts)
        return {"queued": self.queue.qsize(), "queue_size": self.queue.maxsize, "busy": self.busy,
                "served": self.served, "failed": self.failed, "cached_images": cached}

    def close(self, timeout: float = 5.0) -> None:
        try:
            self.queue.put(None, timeout=timeout)  # the stop marker, after the jobs already queued
        except queue.Full:
            pass
        self._thread.join(timeout)

    # ------------------------------------------------------------------ worker thread
    def _context(self, job: Job) -> tuple[Any, bool]:
        with self._lock:
            context = self._contexts.get(job.key)
            if context is not None:
                self._contexts.move_to_end(job.key)
                return context, True
        # evicted since the handler looked, or never seen: the bytes decoded once already or decode now
        rgb = job.rgb if job.rgb is not None else decode_checked(job.image_bytes)
        context = self.runtime.encode(rgb)
        with self._lock:
            self._contexts[job.key] = context
            while len(self._contexts) > self.cache_size:
                self._contexts.popitem(last=False)
        return context, False

    def _run_job(self, job: Job) -> Result:
        started = time.perf_counter()
        context, cached = self._context(job)
        encode_ms = 0.0 if cached else (time.perf_counter() - started) * 1000

        def on_token(_token: int, text: str):
            if job.cancelled.is_set():
                return False  # the client disconnected: stop generating
            if job.on_text is not None:
                job.on_text(text)
            return None

        answer = self.runtime.generate(context, job.question, on_token=on_token, **job.sampling)
        budget = job.sampling.get("max_new_tokens", 64)
        return Result(answer.text, len(answer.token_ids), "length" if len(answer.token_ids) >= budget else "stop",
                      (time.perf_counter() - started) * 1000, encode_ms, (started - job.queued_at) * 1000, cached)

    def _run(self) -> None:
        while True:
            job = self.queue.get()
            if job is None:
                return
            if job.cancelled.is_set():  # its client went away while it waited
                job.future.cancel()
            if not job.future.set_running_or_notify_cancel():
                continue
            self.busy = True
            try:
                job.future.set_result(self._run_job(job))
                self.served += 1
            except BaseException as e:  # noqa: BLE001 -- handed to the waiting handler, the worker goes on
                self.failed += 1
                job.future.set_exception(e)
            finally:
                self.busy = False
