"""`nanovla serve --ros-topic`: camera_sim publishes frames in its own process; the server shows
the newest one, describes it, and answers a question about exactly that frame (its context reused)."""

from __future__ import annotations

import base64
import json
import os
import sys
import time
import urllib.request

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from serve_helpers import chat_body, request, serve_subprocess  # noqa: E402

pytest.importorskip("fastapi")
pytestmark = pytest.mark.ros
NS = "/serve_test"


@pytest.mark.parametrize("topic", [f"{NS}/image", f"{NS}/image/compressed"])
def test_the_page_api_shows_and_describes_the_newest_camera_frame(ros_env, start_node, tmp_path, topic):
    camera = start_node("camera_sim", {"rate_hz": 2.0, "transport": "both"}, ["-r", f"__ns:={NS}"])
    try:
        _check_camera_view(ros_env, tmp_path, topic, camera)
    finally:
        camera.stop()


def _check_camera_view(ros_env, tmp_path, topic, camera):
    with serve_subprocess("--ros-topic", topic, log_path=str(tmp_path / "serve.log"), env=ros_env) as (base, _):
        deadline = time.monotonic() + 90
        state = {}
        while time.monotonic() < deadline:
            state = json.loads(request(base + "/ros/state")[1])
            if state["description"]["seq"] >= 1:
                break
            time.sleep(0.3)
        assert state.get("enabled") and state["topic"] == topic, state
        assert state["description"]["seq"] >= 1 and state["description"]["text"], (state, camera.log())
        assert state["frame_size"] == [640, 480] and state["errors"] == 0

        # ask about a frame the describer has just described: its context comes from the cache
        for _ in range(20):
            with urllib.request.urlopen(base + "/ros/frame.jpg", timeout=30) as r:
                seq, jpeg = int(r.headers["X-Frame-Seq"]), r.read()
            if json.loads(request(base + "/ros/state")[1])["description"]["seq"] == seq:
                break
            time.sleep(0.2)
        else:
            pytest.fail("no frame was both the newest and described in 20 tries")
        assert jpeg[:2] == b"\xff\xd8"
        url = "data:image/jpeg;base64," + base64.b64encode(jpeg).decode()
        status, raw = request(base + "/v1/chat/completions", chat_body(url, "how many objects are there?"))
        assert status == 200, raw
        answer = json.loads(raw)
        assert answer["choices"][0]["message"]["content"] and answer["nanovla"]["image_cached"]
        assert request(base + "/health")[0] == 200
