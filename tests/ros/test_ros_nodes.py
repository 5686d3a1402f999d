"""The nodes for real: installed executables in separate processes, talking over Fast DDS.

One describer (a tiny random checkpoint whose answers run to max_new_tokens) serves the tests of
this module in namespace /t; they run in file order, the lifecycle test last.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time

import numpy as np
import pytest

from nanovla.runtime.prompts import DESCRIBE_PROMPT

pytestmark = pytest.mark.ros

pytest.importorskip("rclpy", reason="rclpy is not installed (scripts/ros_setup.sh installs the ROS 2 wheels)")

from ros_harness import INSTALL, ROOT, Client, wait_until  # noqa: E402

NS = "/t"
FLOOD_SECONDS = float(os.environ.get("NANOVLA_ROS_FLOOD_S", "6"))


class Harness:
    """Publishers, subscriptions and clients of the test process around the describer in /t."""

    def __init__(self, client, describer):
        from diagnostic_msgs.msg import DiagnosticArray
        from lifecycle_msgs.srv import ChangeState, GetState
        from rcl_interfaces.srv import SetParameters
        from rclpy.action import ActionClient
        from rclpy.qos import qos_profile_sensor_data
        from sensor_msgs.msg import CompressedImage, Image
        from std_msgs.msg import String

        from nanovla_msgs.action import AskStream
        from nanovla_msgs.msg import SceneDescription
        from nanovla_msgs.srv import Ask

        self.client, self.node, self.describer = client, client.node, describer
        self.lock = threading.Lock()
        self.descriptions: list[tuple[float, SceneDescription]] = []  # (receive time, msg)
        self.texts: list[str] = []
        self.diagnostics: dict[str, str] = {}
        node = self.node
        self.image_pub = node.create_publisher(Image, f"{NS}/image", qos_profile_sensor_data)
        self.compressed_pub = node.create_publisher(CompressedImage, f"{NS}/image/compressed", qos_profile_sensor_data)
        node.create_subscription(SceneDescription, f"{NS}/description", self._on_description, 50)
        node.create_subscription(String, f"{NS}/description/text", lambda m: self.texts.append(m.data), 50)
        node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diagnostics, 10)
        self.ask = node.create_client(Ask, f"{NS}/ask")
        self.ask_stream = ActionClient(node, AskStream, f"{NS}/ask_stream")
        self.set_parameters = node.create_client(SetParameters, f"{NS}/describer/set_parameters")
        self.change_state = node.create_client(ChangeState, f"{NS}/describer/change_state")
        self.get_state = node.create_client(GetState, f"{NS}/describer/get_state")

    def _on_description(self, msg):
        with self.lock:
            self.descriptions.append((time.time(), msg))

    def _on_diagnostics(self, msg):
        for status in msg.status:
            if status.name.startswith(f"{NS}/describer"):
                with self.lock:
                    self.diagnostics = {kv.key: kv.value for kv in status.values}

    @contextlib.contextmanager
    def max_rate(self, hz: float):
        """The describer at `hz` descriptions/s within the block, back to DESCRIBER_PARAMS' rate after."""
        assert self.set_param("max_rate_hz", hz).successful
        try:
            yield
        finally:
            self.set_param("max_rate_hz", DESCRIBER_PARAMS["max_rate_hz"])

    def diag(self, key: str) -> str:
        with self.lock:
            return self.diagnostics.get(key, "")

    def described(self, frame_id: str):
        with self.lock:
            return [m for _, m in self.descriptions if m.header.frame_id == frame_id]

    def stamp(self):
        return self.node.get_clock().now().to_msg()

    def publish_until_described(self, make_msg, frame_id: str, compressed: bool = False, timeout: float = 30.0):
        """Publish (best effort) a fresh stamp every 0.25 s until a description of frame_id comes back."""
        sent = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            msg = make_msg()
            msg.header.stamp, msg.header.frame_id = self.stamp(), frame_id
            (self.compressed_pub if compressed else self.image_pub).publish(msg)
            sent.append((msg.header.stamp.sec, msg.header.stamp.nanosec))
            end = time.monotonic() + 0.25
            while time.monotonic() < end:
                got = self.described(frame_id)
                if got:
                    return got[0], sent
                time.sleep(0.02)
        raise AssertionError(f"no description of frame {frame_id!r} within {timeout} s; describer log:\n"
                             f"{self.describer.log()[-2000:]}")

    def call(self, client, request, timeout: float = 30.0):
        assert client.wait_for_service(timeout_sec=20.0), f"{client.srv_name} not available"
        return self.client.call(client, request, timeout)

    def set_param(self, name: str, value):
        from rclpy.parameter import Parameter as P
        from rcl_interfaces.srv import SetParameters

        msg = P(name, value=value).to_parameter_msg()
        return self.call(self.set_parameters, SetParameters.Request(parameters=[msg])).results[0]

    def transition(self, label: str) -> bool:
        from lifecycle_msgs.msg import Transition
        from lifecycle_msgs.srv import ChangeState

        ids = {"configure": Transition.TRANSITION_CONFIGURE, "activate": Transition.TRANSITION_ACTIVATE,
               "deactivate": Transition.TRANSITION_DEACTIVATE, "cleanup": Transition.TRANSITION_CLEANUP}
        return self.call(self.change_state, ChangeState.Request(transition=Transition(id=ids[label]))).success

    def state(self) -> str:
        from lifecycle_msgs.srv import GetState

        return self.call(self.get_state, GetState.Request()).current_state.label


def scene_frame(index: int = 0, width: int = 0, height: int = 0) -> np.ndarray:
    import cv2

    from nanovla.data.scenes import generate

    rgb = generate("eval", 11, index)[0]
    return cv2.resize(rgb, (width, height)) if width else rgb


def image_msg(rgb, encoding="rgb8", padding=0):
    from sensor_msgs.msg import Image

    from nanovla_ros.image_conversion import rgb_to_image_fields

    h, w, step, data = rgb_to_image_fields(rgb, encoding, padding)
    msg = Image(height=h, width=w, encoding=encoding, step=step)
    msg.data = data
    return msg


def compressed_msg(rgb, fmt="jpeg"):
    from sensor_msgs.msg import CompressedImage

    from nanovla_ros.image_conversion import rgb_to_compressed_data

    msg = CompressedImage(format=fmt)
    msg.data = rgb_to_compressed_data(rgb, fmt)
    return msg


DESCRIBER_PARAMS = {"max_rate_hz": 50.0, "max_frame_age_s": 3.0, "max_new_tokens": 12, "autostart": True}


@pytest.fixture(scope="module")
def describer(start_node, long_answer_checkpoint):
    node = start_node("describer", {**DESCRIBER_PARAMS, "model": long_answer_checkpoint}, ["-r", f"__ns:={NS}"])
    node.wait_for_log(r"active: describing", timeout=90)
    return node


@pytest.fixture(scope="module")
def h(client, describer):
    harness = Harness(client, describer)
    wait_until(lambda: harness.diag("state") == "active", 20, message="diagnostics from the describer")
    return harness


@pytest.fixture(scope="module")
def runtime(long_answer_checkpoint):
    from nanovla.runtime.base import load_runtime

    rt = load_runtime(long_answer_checkpoint)
    yield rt
    rt.close()


# ------------------------------------------------------------------ descriptions, questions


def test_ask_without_a_frame_says_why(h):
    from nanovla_msgs.srv import Ask

    response = h.call(h.ask, Ask.Request(question="what is on the table?"))
    assert not response.success and "no camera frame" in response.message


def test_description_keeps_the_frame_stamp_and_frame_id(h, runtime, long_answer_checkpoint):
    rgb = scene_frame(0)
    description, sent = h.publish_until_described(lambda: image_msg(rgb), "stamp_test")
    assert (description.header.stamp.sec, description.header.stamp.nanosec) in sent
    assert description.model == long_answer_checkpoint and description.backend == "torch"
    assert description.latency_s > 0 and 0 <= description.frame_age_s < DESCRIBER_PARAMS["max_frame_age_s"]
    # the text is what the runtime itself says about this frame (greedy decoding is deterministic)
    expected = runtime.describe(rgb, max_new_tokens=DESCRIBER_PARAMS["max_new_tokens"]).text
    assert description.text == expected and description.text
    wait_until(lambda: expected in h.texts, 5, message="the text on description/text")


def test_ask_service_answers_about_the_latest_frame_reusing_its_context(h, runtime):
    from nanovla_msgs.srv import Ask

    rgb = scene_frame(1)
    description, sent = h.publish_until_described(lambda: image_msg(rgb), "ask_test")
    question = "what is left of the cube?"
    first = h.call(h.ask, Ask.Request(question=question))
    time.sleep(1.2)  # a diagnostics message after the first answer
    encodes = int(h.diag("frames_encoded"))
    second = h.call(h.ask, Ask.Request(question=question))
    third = h.call(h.ask, Ask.Request(question="how many objects are there?"))
    time.sleep(1.2)
    assert int(h.diag("frames_encoded")) == encodes, "the frame was encoded again for a later question"
    assert first.success and third.success, first.message
    # the latest frame: the described one, or a copy of it published after it that was still in flight
    # when the publishing loop stopped (the same image, a later stamp)
    stamp = (first.header.stamp.sec, first.header.stamp.nanosec)
    assert first.header.frame_id == "ask_test" and stamp in sent
    assert stamp >= (description.header.stamp.sec, description.header.stamp.nanosec)
    assert second.header == first.header == third.header, "a later question was answered about another frame"
    expected = runtime.ask(rgb, question, max_new_tokens=DESCRIBER_PARAMS["max_new_tokens"]).text
    assert first.answer == expected == second.answer
    refused = h.call(h.ask, Ask.Request(question="   "))
    assert not refused.success and "empty question" in refused.message


def _send_goal(h, question: str, max_new_tokens: int, feedback: list):
    from nanovla_msgs.action import AskStream

    assert h.ask_stream.wait_for_server(timeout_sec=20.0)
    future = h.ask_stream.send_goal_async(AskStream.Goal(question=question, max_new_tokens=max_new_tokens),
                                          feedback_callback=lambda f: feedback.append(f.feedback))
    goal = h.client.wait_future(future, 20.0)
    assert goal.accepted
    return goal


def test_ask_stream_action_streams_the_answer(h, runtime):
    from action_msgs.msg import GoalStatus

    rgb = scene_frame(2)
    h.publish_until_described(lambda: image_msg(rgb), "stream_test")
    feedback = []
    goal = _send_goal(h, "what colour is the ball?", 40, feedback)
    result = h.client.wait_future(goal.get_result_async(), 60.0)
    assert result.status == GoalStatus.STATUS_SUCCEEDED
    assert result.result.tokens == 40 and result.result.header.frame_id == "stream_test"
    # feedback is reliable keep-last-10: a burst of tokens may overwrite some, never reorder them
    tokens = [f.tokens for f in feedback]
    assert len(tokens) >= 10 and tokens == sorted(set(tokens)) and tokens[-1] <= 40, tokens
    if tokens[-1] == 40:
        assert feedback[-1].text_so_far.strip() == result.result.answer
    assert result.result.answer == runtime.ask(rgb, "what colour is the ball?", max_new_tokens=40).text


def test_cancelling_ask_stream_stops_generation(h):
    from action_msgs.msg import GoalStatus
    from nanovla_msgs.srv import Ask

    h.publish_until_described(lambda: image_msg(scene_frame(3)), "cancel_test")
    feedback = []
    goal = _send_goal(h, "describe everything you see.", 900, feedback)
    wait_until(lambda: len(feedback) >= 5, 30, message="first feedback")
    cancel_sent = time.monotonic()
    h.client.wait_future(goal.cancel_goal_async(), 10.0)
    result = h.client.wait_future(goal.get_result_async(), 30.0)
    stopped_after = time.monotonic() - cancel_sent
    assert result.status == GoalStatus.STATUS_CANCELED
    assert result.result.tokens < 900  # generation stopped, it did not run to the end in the background
    tokens_at_cancel = len(feedback)
    time.sleep(0.5)
    assert len(feedback) == tokens_at_cancel, "feedback kept coming after the cancel"
    assert stopped_after < 5.0
    # the model is free again at once
    t0 = time.monotonic()
    assert h.call(h.ask, Ask.Request(question="what is here?")).success
    assert time.monotonic() - t0 < 10.0


# ------------------------------------------------------------------ encodings


@pytest.mark.parametrize("encoding", ["rgb8", "bgr8", "mono8", "rgba8", "bgra8"])
def test_every_encoding_with_row_padding_is_described(h, encoding):
    rgb = scene_frame(4, 320, 240)
    bad_before = int(h.diag("frames_bad") or 0)
    for padding in (0, 12):
        description, _ = h.publish_until_described(lambda: image_msg(rgb, encoding, padding), f"{encoding}_{padding}")
        assert description.text
    assert int(h.diag("frames_bad") or 0) == bad_before


@pytest.mark.parametrize("fmt", ["jpeg", "png"])
def test_compressed_image_is_described(h, fmt, runtime):
    rgb = scene_frame(5)
    description, _ = h.publish_until_described(lambda: compressed_msg(rgb, fmt), f"compressed_{fmt}", compressed=True)
    if fmt == "png":  # lossless: exactly what the runtime says about the frame
        assert description.text == runtime.describe(rgb, max_new_tokens=DESCRIBER_PARAMS["max_new_tokens"]).text


def test_frames_older_than_max_frame_age_are_skipped(h):
    from builtin_interfaces.msg import Time

    stale_before = int(h.diag("frames_dropped_stale"))
    rgb = scene_frame(0, 320, 240)
    for _ in range(8):
        msg = image_msg(rgb)
        now = h.node.get_clock().now().nanoseconds
        old = now - 10 * 1_000_000_000  # 10 s ago; max_frame_age_s is 3
        msg.header.stamp, msg.header.frame_id = Time(sec=old // 10**9, nanosec=old % 10**9), "stale_frame"
        h.image_pub.publish(msg)
        time.sleep(0.2)
    wait_until(lambda: int(h.diag("frames_dropped_stale")) > stale_before, 5, message="stale frames counted")
    assert not h.described("stale_frame")


# ------------------------------------------------------------------ bad frames


def _bad_frames():
    import cv2
    from sensor_msgs.msg import CompressedImage, Image

    def raw(encoding="rgb8", width=64, height=48, step=None, size=None):
        msg = Image(height=height, width=width, encoding=encoding, step=width * 3 if step is None else step)
        msg.data = bytes(height * msg.step if size is None else size)
        return msg

    corrupt = CompressedImage(format="jpeg")
    corrupt.data = compressed_msg(scene_frame(0)).data[:300]
    huge_png = CompressedImage(format="png")
    huge_png.data = cv2.imencode(".png", np.zeros((7072, 7072), np.uint8))[1].tobytes()  # 50 MP, ~50 KB
    # a real 50 MP mono8 frame: 50 MB on the wire (fits the 64 MB shared-memory segment of this process)
    huge_raw = Image(height=7072, width=7072, encoding="mono8", step=7072)
    huge_raw.data = bytes(7072 * 7072)
    return [
        ("wrong_encoding", raw(encoding="yuv422"), False, r"unsupported encoding 'yuv422'"),
        ("short_data", raw(size=1000), False, r"data has 1000 bytes, expected height\*step = 9216"),
        ("zero_size", raw(width=0, height=0), False, r"empty frame \(0x0\)"),
        ("corrupt_jpeg", corrupt, True, r"not a decodable image"),
        ("huge_png", huge_png, True, r"7072x7072 image exceeds"),
        ("huge_raw", huge_raw, False, r"7072x7072 frame exceeds"),
    ]


def test_bad_frames_are_logged_and_counted_and_the_node_keeps_serving(h):
    for frame_id, msg, compressed, reason in _bad_frames():
        bad_before = int(h.diag("frames_bad") or 0)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:  # best effort: repeat until the describer has seen it
            msg.header.stamp, msg.header.frame_id = h.stamp(), frame_id
            (h.compressed_pub if compressed else h.image_pub).publish(msg)
            time.sleep(0.3)
            if frame_id in h.describer.log() and int(h.diag("frames_bad") or 0) > bad_before:
                break
        log = h.describer.log()
        assert f"frame_id '{frame_id}'" in log, f"{frame_id}: not reported in the log:\n{log[-1500:]}"
        line = next(line for line in log.splitlines() if f"frame_id '{frame_id}'" in line)
        import re

        assert re.search(reason, line), line
        assert int(h.diag("frames_bad")) > bad_before
        assert "bad frame" in h.diag("last_error")
        assert h.describer.proc.poll() is None
    description, _ = h.publish_until_described(lambda: image_msg(scene_frame(6)), "after_bad_frames")
    assert description.text


STREAM_SECONDS = float(os.environ.get("NANOVLA_ROS_STREAM_S", "6"))
MAX_GAP_S = DESCRIBER_PARAMS["max_frame_age_s"]


def _bench_ros():
    """benchmarks/bench_ros.py as a module: its bad-frame makers (what `--bad-every` publishes)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_ros", os.path.join(ROOT, "benchmarks", "bench_ros.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_30fps_stream_with_bad_frames_mixed_in_keeps_being_described(h):
    """640x480 rgb8 at 30 FPS, 1 frame in 3 a bad one of bench_ros's five kinds (at seeded random
    places; the last second clean): descriptions keep coming through the stream (no gap over
    MAX_GAP_S, the frame-age limit; on a shared 2-core machine, the test's own 27 MB/s publisher and
    the DDS transport starve the node for up to ~1-2 s now and then) and after the last bad frame,
    the bad frames the describer took are counted and logged (at most once per reason per 5 s), and
    the node stays up with flat memory."""
    bench = _bench_ros()
    good = image_msg(scene_frame(7, 640, 480))
    rng = np.random.default_rng(1)
    frames = int(30 * STREAM_SECONDS)
    bad_before = int(h.diag("frames_bad") or 0)
    log_before = h.describer.log().count("\n")
    rss_start = h.describer.rss_mb()
    sent_bad, last_bad_stamp = {k: 0 for k in bench.BAD_RAW}, 0.0
    start = time.monotonic()
    for i in range(frames):
        wait = start + i / 30.0 - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        msg = good
        if rng.random() < 1 / 3 and i < frames - 30:
            kind = bench.BAD_RAW[sum(sent_bad.values()) % len(bench.BAD_RAW)]
            msg = bench.bad_image(kind, good)
            sent_bad[kind] += 1
        msg.header.stamp, msg.header.frame_id = h.stamp(), "bad_stream"
        h.image_pub.publish(msg)
        if msg is not good:
            last_bad_stamp = msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9
    end = time.monotonic()
    time.sleep(2.0)  # the last description, a diagnostics message that counts every frame
    with h.lock:
        stream = [(t, m) for t, m in h.descriptions if m.header.frame_id == "bad_stream"]
    # arrival times on the monotonic clock of the loop above
    arrivals = [time.monotonic() - (time.time() - t) for t, _ in stream]
    per_second = [sum(1 for a in arrivals if start + s <= a < start + s + 1) for s in range(int(end - start))]
    # the first second: discovery of a new frame_id
    edges = [start + 1.0] + sorted(a for a in arrivals if start + 1.0 <= a <= end) + [end]
    longest_gap = max(b - a for a, b in zip(edges, edges[1:]))
    stamps = [m.header.stamp.sec + m.header.stamp.nanosec * 1e-9 for _, m in stream]
    new_log = h.describer.log().splitlines()[log_before:]
    warnings = [line for line in new_log if "bad Image frame" in line and "'bad_stream'" in line]
    report = {"frames": frames, "bad_sent": sent_bad, "descriptions": len(stream), "per_second": per_second,
              "longest_gap_s": round(longest_gap, 2),
              "after_last_bad": sum(1 for s in stamps if s > last_bad_stamp),
              "bad_counted": int(h.diag("frames_bad") or 0) - bad_before, "warning_lines": len(warnings),
              "rss_start_mb": rss_start, "rss_end_mb": h.describer.rss_mb()}
    print(json.dumps(report))
    assert h.describer.proc.poll() is None, h.describer.log()[-2000:]
    assert longest_gap <= MAX_GAP_S, report
    assert report["after_last_bad"] >= 1, report
    assert report["bad_counted"] >= 1 and warnings, report
    # one line per reason per 5 s: never one per bad frame
    assert len(warnings) <= len(bench.BAD_RAW) * (int(STREAM_SECONDS / 5) + 2), report
    assert report["rss_end_mb"] <= rss_start * 1.10 + 20, report


# ------------------------------------------------------------------ camera rates, delivery, flood


def _count_frames(h, topic: str):
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import Image

    stamps = set()
    sub = h.node.create_subscription(Image, topic, lambda m: stamps.add((m.header.stamp.sec, m.header.stamp.nanosec)),
                                     qos_profile_sensor_data)
    return stamps, sub


@pytest.mark.parametrize("width, height", [(640, 480), (1280, 720)])
def test_camera_frames_at_30fps_arrive(h, start_node, width, height, tmp_path_factory):
    """camera_sim in its own process, 30 FPS rgb8: the share of frames that arrive, here and at the
    describer (describing at 5 Hz, the order of a deployment's rate: the launch default is 2 Hz)."""
    frames = 90
    stamps, sub = _count_frames(h, f"{NS}/image")
    with h.max_rate(5.0):
        time.sleep(1.5)  # discovery, and a diagnostics message that counts every earlier frame
        received_before = int(h.diag("frames_received"))
        camera = start_node("camera_sim", {"rate_hz": 30.0, "width": width, "height": height, "max_frames": frames,
                                           "frame_id": f"cam_{width}", "wait_for_subscribers": 2},
                            ["-r", f"__ns:={NS}"])
        assert camera.proc.wait(60) == 0, camera.log()
        time.sleep(1.5)  # last diagnostics
    h.node.destroy_subscription(sub)
    at_test = len(stamps) / frames
    at_describer = (int(h.diag("frames_received")) - received_before) / frames
    report = {"resolution": f"{width}x{height}", "frames_published": frames, "delivered_to_test_process": at_test,
              "delivered_to_describer": at_describer}
    print(json.dumps(report))
    out = os.environ.get("NANOVLA_ROS_REPORT_DIR")
    if out:
        with open(os.path.join(out, f"delivery_{width}x{height}.json"), "w") as f:
            json.dump(report, f)
    # with the camera's 64 MB shared-memory segment every frame reached the test process in every run
    # here (without the profile: 10-40 % at 640x480). The describer shares the two cores with
    # camera_sim's renderer (~1 core at 30 FPS) and its own inference: describing flat out (50 Hz) it
    # once took 64 % of 1280x720 frames, and 39 % of 640x480 ones on CI's shared machine, while the
    # transport delivered 100 % to the test process (frames its executor did not take in time were
    # overwritten in the keep-last history -- the newest-frame policy at work). Hence 5 Hz here, a
    # high bar for the transport and a lower one for the describer.
    assert at_test >= 0.8 and at_describer >= 0.5, report
    assert h.described(f"cam_{width}"), "the describer did not describe the camera's frames"


@pytest.mark.parametrize("seconds", [
    pytest.param(FLOOD_SECONDS, id="short"),
    pytest.param(30.0, id="30s", marks=pytest.mark.slow),
])
def test_flood_keeps_no_queue_and_no_memory_growth(h, start_node, seconds):
    """30 FPS for `seconds` into a describer throttled to 5 descriptions/s: it describes recent frames
    only (the rest are dropped, not queued) and its memory stays flat."""
    with h.max_rate(5.0):
        dropped_before = int(h.diag("frames_dropped_newer"))
        camera = start_node("camera_sim", {"rate_hz": 30.0, "max_frames": int(30 * seconds), "frame_id": "flood",
                                           "scene_period_s": 0.5}, ["-r", f"__ns:={NS}"])
        wait_until(lambda: h.described("flood"), 20, message="first description of the flood")
        time.sleep(1.0)
        rss_start = h.describer.rss_mb()
        assert camera.proc.wait(seconds + 30) == 0, camera.log()
        rss_end = h.describer.rss_mb()
        time.sleep(1.2)
        with h.lock:
            flood = [(t, m) for t, m in h.descriptions if m.header.frame_id == "flood"]
        # every description is of a frame that was recent when it was published
        delays = [t - (m.header.stamp.sec + m.header.stamp.nanosec * 1e-9) for t, m in flood]
        ages = [m.frame_age_s for _, m in flood]
        dropped = int(h.diag("frames_dropped_newer")) - dropped_before
        report = {"seconds": seconds, "descriptions": len(flood), "max_stamp_to_description_s": max(delays),
                  "max_frame_age_s": max(ages), "dropped_newer": dropped, "rss_start_mb": rss_start,
                  "rss_end_mb": rss_end}
        print(json.dumps(report))
        assert len(flood) >= 2 * seconds, report  # ~5/s requested; leave room for a loaded machine
        assert max(ages) < 0.5 and max(delays[len(delays) // 2:]) < 1.5, report
        assert dropped > 10 * seconds, report  # newer frames replaced older ones instead of queueing
        assert rss_end <= rss_start * 1.10 + 5, report


# ------------------------------------------------------------------ parameters and lifecycle


@pytest.mark.parametrize("name, value, reason", [
    ("max_rate_hz", -1.0, ""),
    ("max_new_tokens", 0, ""),
    ("prompt", "  ", "empty question"),
    ("prompt", "say <|assistant_end|>", "reserved token"),
    ("backend", "tflite", "read when the model loads"),
    ("model", "/nonexistent", "read when the model loads"),
    ("temperature", float("nan"), ""),
])
def test_invalid_parameters_are_refused_with_a_reason(h, name, value, reason):
    result = h.set_param(name, value)
    assert not result.successful
    assert result.reason and reason in result.reason


def test_valid_parameter_change_takes_effect(h):
    assert h.set_param("prompt", "what is on the table?").successful
    try:
        description, _ = h.publish_until_described(lambda: image_msg(scene_frame(7)), "prompt_test")
        assert description.text
    finally:
        assert h.set_param("prompt", DESCRIBE_PROMPT).successful


def test_lifecycle_deactivate_cleanup_configure_activate(h, long_answer_checkpoint):
    from nanovla_msgs.srv import Ask

    assert h.state() == "active"
    assert h.transition("deactivate") and h.state() == "inactive"
    count = len(h.descriptions)
    for _ in range(6):
        msg = image_msg(scene_frame(8))
        msg.header.stamp, msg.header.frame_id = h.stamp(), "while_inactive"
        h.image_pub.publish(msg)
        time.sleep(0.2)
    assert len(h.descriptions) == count and not h.described("while_inactive")
    refused = h.call(h.ask, Ask.Request(question="what is here?"))
    assert not refused.success and "not active" in refused.message

    assert h.transition("cleanup") and h.state() == "unconfigured"  # model freed
    wait_until(lambda: h.diag("state") == "unconfigured", 5, message="diagnostics state unconfigured")
    assert not h.set_param("backend", "tflite").successful  # still validated when unconfigured
    assert h.set_param("model", long_answer_checkpoint).successful  # load-time parameters settable now
    assert h.transition("configure") and h.transition("activate") and h.state() == "active"
    description, _ = h.publish_until_described(lambda: image_msg(scene_frame(9)), "after_reactivate")
    assert description.text


# ------------------------------------------------------------------ params file, launch files


def test_params_file_applies_in_any_namespace_and_bad_values_stop_the_node(start_node, tmp_path):
    from rcl_interfaces.srv import GetParameters



    params = os.path.join(INSTALL, "nanovla_ros", "share", "nanovla_ros", "config", "params.yaml")
    node = start_node("describer", None, ["--params-file", params, "-r", "__ns:=/front"])
    c = Client("params_probe")
    try:
        cli = c.node.create_client(GetParameters, "/front/describer/get_parameters")
        assert cli.wait_for_service(timeout_sec=30.0), node.log()
        values = c.call(cli, GetParameters.Request(
            names=["max_rate_hz", "qos_depth", "compressed_image_topic", "autostart"]), 10.0, attempts=3).values
        assert [values[0].double_value, values[1].integer_value, values[2].string_value, values[3].bool_value] == \
            [2.0, 5, "image/compressed", False]
    finally:
        c.close()
        node.stop()
    bad = tmp_path / "bad.yaml"
    bad.write_text("/**/describer:\n  ros__parameters:\n    backend: tflite\n")
    node = start_node("describer", None, ["--params-file", str(bad)])
    assert node.proc.wait(60) == 2
    assert "unknown backend 'tflite'" in node.log()


def test_launch_files_compile(ros_env):
    """Everywhere, including CI without launch_ros; test_ros_launch.py runs them where it imports."""
    import glob
    import py_compile

    launch_dir = os.path.join(INSTALL, "nanovla_ros", "share", "nanovla_ros", "launch")
    files = sorted(glob.glob(os.path.join(launch_dir, "*.launch.py")))
    assert {os.path.basename(f) for f in files} == {"vla.launch.py", "demo.launch.py", "multi_camera.launch.py"}
    for path in files:
        py_compile.compile(path, doraise=True)


# ------------------------------------------------------------------ camera_sim sources


def test_camera_sim_plays_image_folders_and_video_files(client, start_node, tmp_path):
    import cv2
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import CompressedImage, Image

    folder = tmp_path / "frames"
    folder.mkdir()
    for i in range(3):
        cv2.imwrite(str(folder / f"{i}.png"), cv2.cvtColor(scene_frame(i, 160, 120), cv2.COLOR_RGB2BGR))
    video = str(tmp_path / "clip.avi")
    writer = cv2.VideoWriter(video, cv2.VideoWriter_fourcc(*"MJPG"), 10, (200, 100))
    for i in range(5):
        writer.write(cv2.cvtColor(scene_frame(i, 200, 100), cv2.COLOR_RGB2BGR))
    writer.release()

    for source, ns, size, transport in [(str(folder), "/src_folder", (160, 120), "raw"),
                                        (video, "/src_video", (200, 100), "both")]:
        frames, compressed = [], []
        client.node.create_subscription(Image, f"{ns}/image", frames.append, qos_profile_sensor_data)
        client.node.create_subscription(CompressedImage, f"{ns}/image/compressed", compressed.append,
                                        qos_profile_sensor_data)
        camera = start_node("camera_sim", {"source": source, "rate_hz": 20.0, "max_frames": 8, "frame_id": "file_cam",
                                           "encoding": "bgr8", "transport": transport, "wait_for_subscribers": 1},
                            ["-r", f"__ns:={ns}"])
        assert camera.proc.wait(60) == 0, camera.log()
        wait_until(lambda: len(frames) >= 6, 5, message=f"frames from {source}")
        assert {(m.width, m.height, m.encoding, m.header.frame_id) for m in frames} == {(*size, "bgr8", "file_cam")}
        assert (len(compressed) >= 6) == (transport == "both")
    bad = start_node("camera_sim", {"source": str(tmp_path / "missing.mp4")})
    assert bad.proc.wait(60) == 2 and "not 'scenes', a camera, an image folder or a video file" in bad.log()
