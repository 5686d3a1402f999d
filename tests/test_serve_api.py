"""`nanovla serve` started as a user starts it (the CLI, its default model and backend) and called
over HTTP: describes equal `nanovla describe`'s, plain and streamed, and through the official
`openai` client; bad input gets a 4xx JSON error and the server keeps answering."""

from __future__ import annotations

import base64
import http.client
import json
import re
import urllib.parse

import pytest

from nanovla.runtime.prompts import DESCRIBE_PROMPT
from serve_helpers import chat_body, png_data_url, read_sse, request, serve_subprocess

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

BODY_LIMIT_MB = 1  # the one non-default flag: a small limit makes the 413 test cheap


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    log = str(tmp_path_factory.mktemp("serve") / "serve.log")
    with serve_subprocess("--max-body-mb", str(BODY_LIMIT_MB), log_path=log) as (base, _process):
        health = json.loads(request(base + "/health")[1])
        yield {"base": base, "model": health["model"], "backend": health["backend"]}


@pytest.fixture(scope="module")
def scenes():
    from nanovla.data.scenes import generate

    return [generate("eval", 11, i) for i in range(3)]


@pytest.fixture(scope="module")
def reference(scenes):
    """What `nanovla describe` prints for the scenes: the same runtime, loaded in this process."""
    from nanovla.runtime import load_runtime

    runtime = load_runtime()  # the CLI's defaults, as the server's
    texts = [runtime.describe(image).text for image, _ in scenes]
    backend = runtime.backend
    runtime.close()
    return backend, texts


def _chat(server, body, stream=False):
    status, raw = request(server["base"] + "/v1/chat/completions", {**body, "stream": stream})
    return status, (read_sse(raw) if stream and status == 200 else json.loads(raw))


def test_health_and_models(server):
    status, raw = request(server["base"] + "/health")
    health = json.loads(raw)
    assert status == 200 and health["status"] == "ok" and health["queue_size"] == 64
    models = json.loads(request(server["base"] + "/v1/models")[1])
    assert models["object"] == "list" and [m["id"] for m in models["data"]] == [server["model"]]


def test_plain_and_streamed_descriptions_equal_nanovla_describe(server, scenes, reference):
    backend, texts = reference
    assert backend == server["backend"]
    named = 0
    for (image, scene), expected in zip(scenes, texts):
        status, body = _chat(server, chat_body(png_data_url(image), model=server["model"]))
        assert status == 200, body
        assert body["object"] == "chat.completion" and body["model"] == server["model"]
        choice = body["choices"][0]
        assert choice["message"] == {"role": "assistant", "content": expected}
        assert choice["finish_reason"] == "stop"

        status, events = _chat(server, chat_body(png_data_url(image)), stream=True)
        assert status == 200 and events[-1] == "[DONE]"
        chunks = events[:-1]
        assert all(c["object"] == "chat.completion.chunk" and c["id"] == chunks[0]["id"] for c in chunks)
        assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
        assert len(chunks) > 3  # streamed piece by piece, not as one block
        assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == expected
        assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
        assert chunks[-1]["nanovla"]["image_cached"]  # the plain request above encoded it
        named += sum(f"{o.color} {o.kind}" in expected for o in scene.objects)
    assert named >= sum(len(s.objects) for _, s in scenes) // 2  # the shipped model names most objects


def test_questions_about_one_image_reuse_its_context(server, scenes):
    image = png_data_url(scenes[0][0])
    first = _chat(server, chat_body(image, "how many objects are there?", max_tokens=8, seed=1))[1]
    second = _chat(server, chat_body(image, "is there a cube?", max_tokens=8, temperature=0.7, top_p=0.9,
                                     seed=1))[1]
    assert second["nanovla"]["image_cached"] and second["nanovla"]["encode_ms"] == 0
    assert first["choices"][0]["message"]["content"] and second["choices"][0]["message"]["content"]
    again = _chat(server, chat_body(image, "is there a cube?", max_tokens=8, temperature=0.7, top_p=0.9, seed=1))[1]
    assert again["choices"][0]["message"] == second["choices"][0]["message"]  # same seed, same answer
    short = _chat(server, chat_body(image, max_tokens=2))[1]
    assert short["choices"][0]["finish_reason"] == "length"


def test_the_official_openai_client(server, scenes, reference):
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=server["base"] + "/v1", api_key="not-checked", max_retries=0, timeout=120)
    assert [m.id for m in client.models.list()] == [server["model"]]
    messages = [{"role": "user", "content": [{"type": "text", "text": DESCRIBE_PROMPT},
                                             {"type": "image_url", "image_url": {"url": png_data_url(scenes[1][0])}}]}]
    reply = client.chat.completions.create(model=server["model"], messages=messages, max_tokens=64)
    assert reply.choices[0].message.content == reference[1][1]
    stream = client.chat.completions.create(model=server["model"], messages=messages, stream=True, seed=0)
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == reference[1][1]
    with pytest.raises(openai.BadRequestError, match="data URL"):
        client.chat.completions.create(model=server["model"], messages=[{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "https://example.com/frame.jpg"}}]}])
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        client.chat.completions.create(model="gpt-4o", messages=messages)


def _bad_requests(image_url: str):
    corrupt = "data:image/jpeg;base64," + base64.b64encode(b"\xff\xd8\xff\xe0" + bytes(500)).decode()
    text_file = "data:image/png;base64," + base64.b64encode(b"just some text, not a picture").decode()
    return [
        ("corrupt image", chat_body(corrupt, "what is this?"), 400, "not a decodable image"),
        ("not an image", chat_body(text_file), 400, "not a decodable image"),
        ("http url", chat_body("http://192.0.2.1/x.png", "?"), 400, "fetches nothing"),
        ("no messages", {"messages": []}, 400, "messages"),
        ("missing messages", {"temperature": 0}, 400, "messages"),
        ("empty question", chat_body(image_url, ""), 400, "empty question"),
        ("over-long question", chat_body(image_url, "why? " * 200), 400, "at most 500"),
        ("unknown model", chat_body(image_url, model="llava-13b"), 404, "does not exist"),
        ("bad max_tokens", chat_body(image_url, max_tokens=-5), 400, "max_tokens"),
        ("not json", b"{\"messages\": [", 400, "not JSON"),
        ("too large", b"{" + b" " * (BODY_LIMIT_MB * 1024 * 1024 + 10) + b"}", 413, "exceeds the limit"),
    ]


@pytest.mark.parametrize("stream", [False, True])
def test_bad_input_gets_a_4xx_json_error_and_the_server_keeps_answering(server, scenes, stream):
    image_url = png_data_url(scenes[0][0])
    for name, body, status, words in _bad_requests(image_url):
        if isinstance(body, dict):
            body = {**body, "stream": stream}
        got, raw = request(server["base"] + "/v1/chat/completions", body)
        assert got == status, (name, raw[:300])
        error = json.loads(raw)["error"]
        assert words in error["message"], (name, error)
        assert error["type"] in ("invalid_request_error", "not_found_error"), (name, error)
        assert "\n" not in error["message"]
    assert request(server["base"] + "/health")[0] == 200
    assert _chat(server, chat_body(image_url, "how many cubes are there?"))[0] == 200


def test_a_chunked_body_over_the_limit_is_refused_while_it_arrives(server):
    url = urllib.parse.urlparse(server["base"])
    connection = http.client.HTTPConnection(url.hostname, url.port, timeout=60)
    piece = b" " * 65536
    chunks = iter([b"{"] + [piece] * (BODY_LIMIT_MB * 16 + 2) + [b"}"])
    try:
        connection.request("POST", "/v1/chat/completions", body=chunks, encode_chunked=True,
                           headers={"Content-Type": "application/json"})
        response = connection.getresponse()
        assert response.status == 413 and "exceeds the limit" in json.loads(response.read())["error"]["message"]
    except (BrokenPipeError, ConnectionResetError):
        pass  # the server answered 413 and closed before the client finished sending: refused all the same
    finally:
        connection.close()
    assert request(server["base"] + "/health")[0] == 200


def test_unknown_paths_and_methods_are_json_errors(server):
    status, raw = request(server["base"] + "/v2/nothing")
    assert status == 404 and json.loads(raw)["error"]["type"] == "not_found_error"
    status, raw = request(server["base"] + "/v1/models", b"{}")
    assert status == 405 and "error" in json.loads(raw)
    status, raw = request(server["base"] + "/samples/..%2F..%2F__init__.py")  # nanovla/__init__.py exists
    assert status == 404


def test_the_page_is_offline_and_has_a_file_input(server):
    status, raw = request(server["base"] + "/")
    page = raw.decode()
    assert status == 200 and '<input id="file" type="file"' in page
    assets = re.findall(r'(?:src|href)="([^"]+)"', page)
    assert assets and all(a.startswith("/static/") for a in assets)  # nothing from a CDN or another host
    for asset in assets:
        status, raw = request(server["base"] + asset)
        assert status == 200, asset
        assert not re.search(rb"https?://", raw), f"{asset} refers to another host"
    samples = json.loads(request(server["base"] + "/samples")[1])["samples"]
    assert samples and all(s.endswith((".jpg", ".png")) for s in samples)
    status, raw = request(server["base"] + "/samples/" + samples[0])
    assert status == 200 and raw[:2] == b"\xff\xd8"
    assert json.loads(request(server["base"] + "/ros/state")[1]) == {"enabled": False}
    assert request(server["base"] + "/ros/frame.jpg")[0] == 404

