"""The describer with its default parameters on a robot without PyTorch: `backend` auto and an
empty `model` load the shipped int8 bundle on onnxruntime; a published frame comes back described
and a question is answered, with `import torch` blocked in the node's process."""

from __future__ import annotations

import threading
import time

import pytest

pytestmark = pytest.mark.ros

pytest.importorskip("rclpy", reason="rclpy is not installed (scripts/ros_setup.sh installs the ROS 2 wheels)")

from ros_harness import NodeProcess  # noqa: E402
from torch_free_helpers import torch_free_env  # noqa: E402

NS = "/notorch"
RSS_GOAL_MB = 400  # issue 20: the describer holding a bundle, not PyTorch


@pytest.fixture(scope="module")
def describer(ros_env, tmp_path_factory):
    env = torch_free_env(str(tmp_path_factory.mktemp("no_torch")), ros_env)
    node = NodeProcess(env, "describer", {"autostart": True, "max_rate_hz": 20.0, "max_frame_age_s": 5.0},
                       ["-r", f"__ns:={NS}"], str(tmp_path_factory.mktemp("logs")))
    try:
        node.wait_for_log(r"active: describing", timeout=120)
        yield node
    finally:
        node.stop()


def test_default_describer_runs_the_shipped_bundle_without_torch(client, describer):
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import Image

    from nanovla.data.scenes import generate
    from nanovla_msgs.msg import SceneDescription
    from nanovla_msgs.srv import Ask
    from nanovla_ros.image_conversion import rgb_to_image_fields

    assert "with onnxruntime" in describer.log() and "default_bundle" in describer.log(), describer.log()[-2000:]
    node = client.node
    got, lock = [], threading.Lock()

    def on_description(msg):
        with lock:
            got.append(msg)

    node.create_subscription(SceneDescription, f"{NS}/description", on_description, 10)
    pub = node.create_publisher(Image, f"{NS}/image", qos_profile_sensor_data)
    h, w, step, data = rgb_to_image_fields(generate("eval", 7, 0)[0], "rgb8")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with lock:
            if got:
                break
        msg = Image(height=h, width=w, encoding="rgb8", step=step)
        msg.data = data
        msg.header.stamp, msg.header.frame_id = node.get_clock().now().to_msg(), "table"
        pub.publish(msg)
        time.sleep(0.25)
    assert got, f"no description within 60 s:\n{describer.log()[-2000:]}"
    description = got[0]
    assert description.backend == "onnxruntime" and description.model.rstrip("/").endswith("default_bundle")
    assert len(description.text.split()) >= 3
    ask = node.create_client(Ask, f"{NS}/ask")
    assert ask.wait_for_service(timeout_sec=20)
    answer = client.call(ask, Ask.Request(question="how many objects are there?"), 60)
    assert answer.success and answer.answer, answer.message
    rss = describer.rss_mb()
    print(f"describer resident memory, torch-free, default parameters: {rss:.0f} MB")
    assert rss <= RSS_GOAL_MB, f"describer holds {rss:.0f} MB resident (goal <= {RSS_GOAL_MB} MB)"
