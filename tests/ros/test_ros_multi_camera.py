"""One describer, several cameras (image_topics): each camera's newest frame described in one
batched pass per tick, each description stamped with its own frame's header, and a camera that
sends bad frames does not stop the others. Installed executables in separate processes, the
shipped default model (backend auto: the int8 bundle on onnxruntime)."""

from __future__ import annotations

import re
import time

import pytest

pytestmark = pytest.mark.ros

pytest.importorskip("rclpy", reason="rclpy is not installed (scripts/ros_setup.sh installs the ROS 2 wheels)")

from ros_harness import Client, wait_until

NS = "/mc"
TOPICS = [f"{NS}/cam_a/image", f"{NS}/cam_b/image", f"{NS}/cam_c/image/compressed"]


def scene(index: int):
    from nanovla.data.scenes import generate

    return generate("eval", 21, index)[0]


def image_msg(rgb, encoding="rgb8"):
    from nanovla_ros.image_conversion import rgb_to_image_fields
    from sensor_msgs.msg import Image

    h, w, step, data = rgb_to_image_fields(rgb, encoding, 0)
    msg = Image(height=h, width=w, encoding=encoding, step=step)
    msg.data = data
    return msg


def png_msg(rgb):
    from nanovla_ros.image_conversion import rgb_to_compressed_data
    from sensor_msgs.msg import CompressedImage

    msg = CompressedImage(format="png")
    msg.data = rgb_to_compressed_data(rgb, "png")
    return msg


class Cameras:
    def __init__(self, client):
        from diagnostic_msgs.msg import DiagnosticArray
        from nanovla_msgs.msg import SceneDescription
        from rclpy.qos import qos_profile_sensor_data
        from sensor_msgs.msg import CompressedImage, Image

        self.node = client.node
        self.pubs = [self.node.create_publisher(CompressedImage if t.endswith("/compressed") else Image, t,
                                                qos_profile_sensor_data) for t in TOPICS]
        self.descriptions = []
        self.passes = []  # frames_in_last_pass, from each diagnostics message
        self.node.create_subscription(SceneDescription, f"{NS}/description", self.descriptions.append, 100)
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diagnostics, 10)

    def _on_diagnostics(self, msg):
        for status in msg.status:
            if status.name.startswith(f"{NS}/describer"):
                values = {kv.key: kv.value for kv in status.values}
                self.passes.append(int(values.get("frames_in_last_pass", 0)))

    def publish(self, camera: int, msg, frame_id: str):
        msg.header.stamp, msg.header.frame_id = self.node.get_clock().now().to_msg(), frame_id
        self.pubs[camera].publish(msg)
        return msg.header

    def described(self, frame_id: str):
        return [m for m in list(self.descriptions) if m.header.frame_id == frame_id]


@pytest.fixture(scope="module")
def describer(start_node):
    node = start_node("describer", {"image_topics": TOPICS, "max_rate_hz": 2.0, "max_frame_age_s": 5.0,
                                    "max_new_tokens": 64, "autostart": True, "threads": 1}, ["-r", f"__ns:={NS}"])
    node.wait_for_log(r"active: describing 3 cameras in one pass", timeout=120)
    return node


@pytest.fixture(scope="module")
def cams(client, describer):
    cameras = Cameras(client)
    wait_until(lambda: cameras.passes, 20, message="diagnostics from the describer")
    return cameras


def test_each_camera_is_described_with_its_own_header_in_one_pass(cams, describer):
    from nanovla.runtime import load_runtime

    frames = {0: scene(0), 1: scene(1), 2: scene(2)}
    ids = {0: "cam_a_optical", 1: "cam_b_optical", 2: "cam_c_optical"}
    sent = {i: set() for i in frames}
    deadline = time.monotonic() + 60
    # all three cameras publish together, 4 times a second (the node's ticks are 2 Hz)
    while time.monotonic() < deadline and not (all(cams.described(ids[i]) for i in frames) and max(cams.passes) >= 2):
        for i, rgb in frames.items():
            msg = png_msg(rgb) if i == 2 else image_msg(rgb)
            header = cams.publish(i, msg, ids[i])
            sent[i].add((header.stamp.sec, header.stamp.nanosec))
        time.sleep(0.25)
    assert all(cams.described(ids[i]) for i in frames), describer.log()[-2000:]
    # several cameras' frames went through one pass (best-effort delivery may leave one out of a tick)
    assert max(cams.passes) >= 2, cams.passes
    runtime = load_runtime(None, "auto", threads=1)
    for i, rgb in frames.items():
        description = cams.described(ids[i])[0]
        assert (description.header.stamp.sec, description.header.stamp.nanosec) in sent[i]
        assert description.backend == "onnxruntime"
        # backend auto, batch_decode auto: what describe() says about this frame alone (PNG is lossless)
        assert description.text == runtime.describe(rgb).text
    runtime.close()


def test_a_camera_with_bad_frames_does_not_stop_the_others(cams, describer):
    from sensor_msgs.msg import CompressedImage, Image

    wrong = Image(height=48, width=64, encoding="yuv422", step=128)
    wrong.data = bytes(48 * 128)
    corrupt = CompressedImage(format="jpeg")
    corrupt.data = bytes(300)
    good = scene(3)
    start = len(cams.described("cam_a_good"))
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and len(cams.described("cam_a_good")) < start + 3:
        cams.publish(0, image_msg(good), "cam_a_good")
        cams.publish(1, wrong, "cam_b_bad")
        cams.publish(2, corrupt, "cam_c_bad")
        time.sleep(0.25)
    assert len(cams.described("cam_a_good")) >= start + 3, describer.log()[-2000:]
    assert not cams.described("cam_b_bad") and not cams.described("cam_c_bad")
    log = describer.log()
    for topic, frame_id, reason in [(TOPICS[1], "cam_b_bad", "unsupported encoding 'yuv422'"),
                                    (TOPICS[2], "cam_c_bad", "not a decodable image")]:
        lines = [line for line in log.splitlines() if f"frame_id '{frame_id}'" in line]
        assert lines, log[-2000:]
        assert re.match(r"\[WARN\]", lines[0]) and topic in lines[0] and reason in lines[0], lines[0]
        # one line per reason, not one per frame (rate-limited, 5 s)
        assert len(lines) <= 1 + 30 // 5, len(lines)
    assert describer.proc.poll() is None


def test_image_topics_are_validated(start_node):
    node = start_node("describer", {"image_topics": ["a/image", "a/image"]})
    assert node.proc.wait(60) == 2 and "listed twice" in node.log()
    node = start_node("describer", {"image_topics": ["bad topic!"]})
    assert node.proc.wait(60) == 2 and "not a valid topic name" in node.log()


def test_default_is_one_camera(start_node):
    """No image_topics: the one camera of image_topic / compressed_image_topic, as before."""
    from rcl_interfaces.srv import GetParameters

    node = start_node("describer", None, ["-r", "__ns:=/mc_default"])
    c = Client("mc_default_probe")
    try:
        cli = c.node.create_client(GetParameters, "/mc_default/describer/get_parameters")
        assert cli.wait_for_service(timeout_sec=30.0), node.log()
        values = c.call(cli, GetParameters.Request(names=["image_topics", "image_topic", "batch_decode"]), 10.0,
                        attempts=3).values
        assert list(values[0].byte_array_value) == [] and list(values[0].string_array_value) == []
        assert values[1].string_value == "image" and values[2].string_value == "auto"
    finally:
        c.close()
        node.stop()
