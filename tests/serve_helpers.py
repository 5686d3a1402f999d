"""Starting `nanovla serve` for tests and the serve benchmark: a real server on a free port, either
the CLI in a subprocess (the shipped defaults) or an app in a uvicorn thread of this process."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def request(url: str, body: bytes | dict | None = None, timeout: float = 120.0,
            headers: dict | None = None) -> tuple[int, bytes]:
    """(status, body bytes) of a GET (body None) or POST; 4xx/5xx are returned, not raised."""
    data = json.dumps(body).encode() if isinstance(body, dict) else body
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def wait_healthy(base: str, timeout: float, process: subprocess.Popen | None = None) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"the server exited with {process.returncode}")
        try:
            status, body = request(base + "/health", timeout=2)
            if status == 200:
                return json.loads(body)
        except OSError:
            pass
        time.sleep(0.3)
    raise TimeoutError(f"{base}/health did not answer within {timeout:.0f}s")


@contextlib.contextmanager
def serve_subprocess(*args: str, timeout: float = 300.0, log_path: str | None = None, env: dict | None = None):
    """`python -m nanovla.cli serve --port P ARGS...` -> (base URL, Popen); stopped afterwards."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = open(log_path, "w") if log_path else subprocess.DEVNULL
    env = {**(os.environ if env is None else env), "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen([sys.executable, "-m", "nanovla.cli", "serve", "--port", str(port), *args],
                               cwd=ROOT, stdout=log, stderr=subprocess.STDOUT if log_path else subprocess.DEVNULL,
                               env=env)
    try:
        try:
            wait_healthy(base, timeout, process)
        except (RuntimeError, TimeoutError) as e:
            tail = open(log_path).read()[-2000:] if log_path else ""
            raise RuntimeError(f"nanovla serve did not start: {e}\n{tail}") from None
        yield base, process
    finally:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if log_path:
            log.close()


@contextlib.contextmanager
def serve_in_thread(app):
    """An app (nanovla.serve.app.create_app) served by uvicorn in a thread of this process -> base URL."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(base, 60)
        yield base
    finally:
        server.should_exit = True
        thread.join(10)


def png_data_url(rgb: np.ndarray) -> str:
    import cv2

    ok, png = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    assert ok
    return "data:image/png;base64," + base64.b64encode(png.tobytes()).decode()


def chat_body(image_url: str | None, question: str | None = None, **fields) -> dict:
    content = []
    if image_url is not None:
        content.append({"type": "image_url", "image_url": {"url": image_url}})
    if question is not None:
        content.append({"type": "text", "text": question})
    return {"messages": [{"role": "user", "content": content}], **fields}


def read_sse(raw: bytes) -> list:
    """A server-sent-events body -> the decoded `data:` payloads ("[DONE]" kept as the string)."""
    events = []
    for block in raw.decode().split("\n\n"):
        if block.startswith("data: "):
            data = block[len("data: "):]
            events.append(data if data == "[DONE]" else json.loads(data))
        elif block.strip():
            raise AssertionError(f"not an SSE data event: {block!r}")
    return events
