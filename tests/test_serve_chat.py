"""nanovla.serve.chat and worker without a server: OpenAI request parsing, and the worker's queue
and context cache (a stand-in runtime that records calls, so the test needs no model)."""

from __future__ import annotations

import base64
import threading

import numpy as np
import pytest

from serve_helpers import chat_body, png_data_url

from nanovla.runtime.prompts import DESCRIBE_PROMPT
from nanovla.runtime.base import Runtime
from nanovla.serve.chat import ApiError, parse_chat_request, parse_data_url
from nanovla.serve.worker import Job, ModelWorker, QueueFull, decode_checked, image_key

IMAGE = png_data_url(np.full((16, 24, 3), 128, np.uint8))


def test_a_text_and_an_image_part_make_a_question_about_the_image():
    body = chat_body(IMAGE, "  how many cubes are there? ", model="m", max_tokens=7, temperature=0.5, top_p=0.9,
                     seed=3, stream=True)
    chat = parse_chat_request(body, "m")
    assert chat.question == "how many cubes are there?"
    assert chat.sampling == {"max_new_tokens": 7, "temperature": 0.5, "top_p": 0.9, "seed": 3}
    assert chat.stream is True
    assert decode_checked(chat.image_bytes).shape == (16, 24, 3)


def test_no_text_part_asks_for_a_description_and_a_follow_up_reuses_the_earlier_image():
    assert parse_chat_request(chat_body(IMAGE), "m").question == DESCRIBE_PROMPT
    body = chat_body(IMAGE, "what colour is the cube?")
    body["messages"] += [{"role": "assistant", "content": "a red cube."},
                         {"role": "user", "content": "is there a ball?"}]
    chat = parse_chat_request(body, "m")
    assert chat.question == "is there a ball?"
    assert chat.image_bytes == base64.b64decode(IMAGE.split(",", 1)[1])
    assert chat.sampling["max_new_tokens"] == 64 and chat.sampling["seed"] is None


@pytest.mark.parametrize("body, status, words", [
    ("not a dict", 400, "JSON object"),
    ({}, 400, "messages must be a non-empty list"),
    ({"messages": []}, 400, "messages must be a non-empty list"),
    ({"messages": [{"role": "system", "content": "hi"}]}, 400, "no user message"),
    ({"messages": [{"role": "robot", "content": "hi"}]}, 400, "role"),
    (chat_body(None, "what is this?"), 400, "no image"),
    (chat_body(IMAGE, "   "), 400, "empty question"),
    (chat_body(IMAGE, "x" * 501), 400, "at most 500"),
    (chat_body(IMAGE, "what is <|image|>?"), 400, "reserved token"),
    (chat_body("https://example.com/cat.jpg", "what is this?"), 400, "fetches nothing"),
    (chat_body("file:///etc/passwd"), 400, "fetches nothing"),
    (chat_body("data:text/plain;base64,aGVsbG8=", "?"), 400, "image/*"),
    (chat_body("data:image/png;base64,@@@not base64@@@"), 400, "does not decode"),
    (chat_body("data:image/png;base64,"), 400, "no image data"),
    (chat_body("just text"), 400, "not a base64 data URL"),
    (chat_body(IMAGE, model="gpt-4o"), 404, "does not exist"),
    (chat_body(IMAGE, max_tokens=0), 400, "max_tokens"),
    (chat_body(IMAGE, max_tokens=10_000), 400, "max_tokens"),
    (chat_body(IMAGE, max_tokens=2.5), 400, "integer"),
    (chat_body(IMAGE, temperature=-1), 400, "temperature"),
    (chat_body(IMAGE, temperature="hot"), 400, "temperature"),
    (chat_body(IMAGE, top_p=0), 400, "top_p"),
    (chat_body(IMAGE, seed=True), 400, "seed"),
    (chat_body(IMAGE, n=2), 400, "n = 1"),
    (chat_body(IMAGE, stream="yes"), 400, "stream"),
    ({"messages": [{"role": "user", "content": [{"type": "audio"}]}]}, 400, "text or image_url part"),
])
def test_bad_requests_are_refused_with_a_status_and_a_message(body, status, words):
    with pytest.raises(ApiError) as info:
        parse_chat_request(body, "m")
    assert info.value.status == status
    assert words in info.value.message
    error = info.value.body()["error"]
    assert error["message"] == info.value.message and error["type"]


def test_a_data_url_with_parameters_decodes():
    payload = base64.b64encode(b"\x89PNG....").decode()
    assert parse_data_url(f"data:image/png;name=a.png;base64,{payload}", "p") == b"\x89PNG...."


class RecordingRuntime(Runtime):
    """Encodes to the image's mean, answers with the question; `gate` (when set) holds encode."""
    backend = "recording"

    def __init__(self):
        self.encoded = 0
        self.gate: threading.Event | None = None

    def encode(self, image):
        if self.gate is not None:
            assert self.gate.wait(10)
        self.encoded += 1
        return float(image.mean())

    def _generate(self, context, question, max_new_tokens, temperature, top_k, top_p, seed, on_token):
        ids = [ord(c) for c in f"{context:.0f} {question}"][:max_new_tokens]
        for i in range(len(ids)):
            if on_token is not None and on_token(ids[i], self.decode(ids[:i + 1])) is False:
                return ids[:i + 1]
        return ids

    def decode(self, ids):
        return "".join(chr(i) for i in ids)


def _job(rgb: np.ndarray, question: str, **sampling) -> Job:
    data = base64.b64decode(png_data_url(rgb).split(",", 1)[1])
    return Job(image_key(data), data, question, {"max_new_tokens": 64, **sampling}, rgb=rgb)


def test_worker_encodes_an_image_once_for_several_questions_and_streams_text():
    runtime = RecordingRuntime()
    worker = ModelWorker(runtime, queue_size=4, cache_size=1)
    try:
        gray, white = np.full((8, 8, 3), 100, np.uint8), np.full((8, 8, 3), 255, np.uint8)
        seen = []
        first = _job(gray, "one?")
        first.on_text = seen.append
        result = worker.submit(first).result(10)
        assert result.text == "100 one?" and not result.image_cached and result.finish_reason == "stop"
        assert seen[-1] == "100 one?" and len(seen) == len(result.text)
        again = _job(gray, "two?")
        assert worker.has_context(again.key)
        assert worker.submit(again).result(10).image_cached
        assert runtime.encoded == 1
        worker.submit(_job(white, "three?")).result(10)  # cache_size 1: the grey image's context goes
        assert runtime.encoded == 2 and not worker.has_context(first.key)
        short = worker.submit(_job(white, "four?", max_new_tokens=3)).result(10)
        assert short.text == "255" and short.finish_reason == "length"
    finally:
        worker.close()


def test_worker_refuses_a_job_when_its_queue_is_full_and_skips_cancelled_ones():
    runtime = RecordingRuntime()
    runtime.gate = threading.Event()
    worker = ModelWorker(runtime, queue_size=1)
    try:
        frames = [np.full((8, 8, 3), v, np.uint8) for v in (1, 2, 3, 4)]
        running = worker.submit(_job(frames[0], "a?"))  # taken by the worker, blocked in encode
        for _ in range(100):
            if worker.busy:
                break
            threading.Event().wait(0.02)
        cancelled = _job(frames[1], "b?")
        worker.submit(cancelled)  # fills the one queue slot
        with pytest.raises(QueueFull):
            worker.submit(_job(frames[2], "c?"))
        cancelled.cancelled.set()
        runtime.gate.set()
        assert running.result(10).text == "1 a?"
        assert worker.submit(_job(frames[3], "d?")).result(10).text == "4 d?"
        assert cancelled.future.cancelled()  # never run
        assert worker.stats()["served"] == 2
    finally:
        worker.close()


def test_a_corrupt_image_is_an_image_error():
    with pytest.raises(ValueError, match="not a decodable image"):
        decode_checked(b"\x89PNG\r\n\x1a\n" + bytes(100))
    with pytest.raises(ValueError, match="too small"):
        decode_checked(base64.b64decode(png_data_url(np.zeros((4, 4, 3), np.uint8)).split(",", 1)[1]))
