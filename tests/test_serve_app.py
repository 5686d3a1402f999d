"""The serve app in this process (uvicorn in a thread): a tiny torch checkpoint served end to end,
a full queue answered with 503, a client that leaves mid-stream stopping the generation, and the
CLI's one-line errors."""

from __future__ import annotations

import http.client
import json
import threading
import time
import urllib.parse

import numpy as np
import pytest

from serve_helpers import chat_body, png_data_url, read_sse, request, serve_in_thread

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from nanovla.runtime.base import Runtime  # noqa: E402
from nanovla.serve.app import create_app, model_id_of  # noqa: E402
from nanovla.serve.worker import ModelWorker  # noqa: E402


def test_a_tiny_torch_checkpoint_answers_as_its_runtime_does(tiny_checkpoint, scene_images):
    pytest.importorskip("torch")
    from nanovla.runtime import load_runtime

    runtime = load_runtime(tiny_checkpoint, backend="torch")
    image = scene_images[0][0]
    expected = runtime.ask(image, "what colour is the cube?", max_new_tokens=12).text
    expected_sampled = runtime.ask(image, "what colour is the cube?", max_new_tokens=12, temperature=1.0,
                                   seed=5).text
    worker = ModelWorker(runtime, queue_size=4)
    try:
        with serve_in_thread(create_app(worker, model_id_of(runtime))) as base:
            health = json.loads(request(base + "/health")[1])
            assert health["model"] == "tiny" and health["backend"] == "torch"
            body = chat_body(png_data_url(image), "what colour is the cube?", model="tiny", max_tokens=12)
            status, raw = request(base + "/v1/chat/completions", body)
            assert status == 200 and json.loads(raw)["choices"][0]["message"]["content"] == expected
            status, raw = request(base + "/v1/chat/completions", {**body, "stream": True})
            events = read_sse(raw)
            assert events[-1] == "[DONE]"
            assert "".join(e["choices"][0]["delta"].get("content", "") for e in events[:-1]) == expected
            status, raw = request(base + "/v1/chat/completions", {**body, "temperature": 1.0, "seed": 5})
            assert json.loads(raw)["choices"][0]["message"]["content"] == expected_sampled
            assert json.loads(request(base + "/health")[1])["cached_images"] == 1
    finally:
        worker.close()


class SlowRuntime(Runtime):
    """Stands in for a model: `gate` holds encode; each token takes `token_s` and is counted."""
    backend = "slow"
    model_path = "/models/slow"

    def __init__(self, token_s: float = 0.0):
        self.gate = threading.Event()
        self.gate.set()
        self.token_s = token_s
        self.generated = 0

    def encode(self, image):
        assert self.gate.wait(30)
        return None

    def _generate(self, context, question, max_new_tokens, temperature, top_k, top_p, seed, on_token):
        ids = []
        for _ in range(max_new_tokens):
            time.sleep(self.token_s)
            ids.append(ord("a"))
            self.generated += 1
            if on_token is not None and on_token(ids[-1], self.decode(ids)) is False:
                break
        return ids

    def decode(self, ids):
        return "".join(chr(i) for i in ids)


def _images(count: int) -> list[str]:
    return [png_data_url(np.full((8, 8, 3), i, np.uint8)) for i in range(count)]


def test_a_full_queue_answers_503_and_the_server_recovers():
    runtime = SlowRuntime()
    runtime.gate.clear()
    worker = ModelWorker(runtime, queue_size=1)
    try:
        with serve_in_thread(create_app(worker, "slow")) as base:
            url = base + "/v1/chat/completions"
            images = _images(4)
            results = {}
            blocked = threading.Thread(target=lambda: results.update(a=request(url, chat_body(images[0], max_tokens=3))))
            blocked.start()
            while not worker.busy:  # the first request holds the worker, blocked in encode
                time.sleep(0.01)
            queued = threading.Thread(target=lambda: results.update(b=request(url, chat_body(images[1], max_tokens=3))))
            queued.start()
            while worker.queue.qsize() < 1:  # the second fills the one queue slot
                time.sleep(0.01)
            for stream in (False, True):
                status, raw = request(url, chat_body(images[2], stream=stream))
                error = json.loads(raw)["error"]
                assert status == 503 and error["type"] == "server_overloaded" and "queue is full" in error["message"]
            assert request(base + "/health")[0] == 200  # the event loop is not blocked by the model
            runtime.gate.set()
            blocked.join(30)
            queued.join(30)
            assert results["a"][0] == 200 and results["b"][0] == 200
            status, raw = request(url, chat_body(images[3], max_tokens=2))
            assert status == 200 and json.loads(raw)["choices"][0]["message"]["content"] == "aa"
    finally:
        runtime.gate.set()
        worker.close()


def test_a_client_that_leaves_mid_stream_stops_the_generation():
    runtime = SlowRuntime(token_s=0.02)
    worker = ModelWorker(runtime)
    try:
        with serve_in_thread(create_app(worker, "slow", default_max_tokens=500)) as base:
            address = urllib.parse.urlparse(base)
            connection = http.client.HTTPConnection(address.hostname, address.port, timeout=30)
            connection.request("POST", "/v1/chat/completions", json.dumps(chat_body(_images(1)[0], stream=True)),
                               {"Content-Type": "application/json"})
            response = connection.getresponse()
            assert response.status == 200
            assert response.read(6) == b"data: "  # the stream has begun (read through the chunked encoding)
            connection.close()  # ... and the client goes away
            deadline = time.monotonic() + 10
            while worker.busy and time.monotonic() < deadline:
                time.sleep(0.05)
            assert not worker.busy and runtime.generated < 250, runtime.generated  # 500 would take 10 s
    finally:
        worker.close()


@pytest.mark.parametrize("argv, words", [
    (["serve", "--port", "70000"], "--port must be 1..65535"),
    (["serve", "--queue-size", "0"], "--queue-size"),
    (["serve", "--model", "/no/such/model"], "no such model directory"),
])
def test_the_cli_refuses_bad_flags_in_one_line(argv, words, capsys):
    from nanovla.cli import main

    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert words in err and "\n" not in err and err.startswith("nanovla: error:")
