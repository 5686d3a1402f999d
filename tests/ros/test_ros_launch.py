"""The launch files, run by launch's LaunchService (what `ros2 launch` runs) where launch and
launch_ros import. They have no PyPI wheels, so CI skips this module (test_ros_nodes.py compiles
the files there); on a machine with ROS 2, or with them built from source, it runs."""

from __future__ import annotations

import glob
import os
import re
import signal
import subprocess
import sys
import threading
import time

import pytest

pytestmark = pytest.mark.ros

pytest.importorskip("rclpy", reason="rclpy is not installed (scripts/ros_setup.sh installs the ROS 2 wheels)")
pytest.importorskip("launch_ros", reason="launch_ros is not importable: it has no PyPI wheels (ROS2-NOTES.md)")

from ros_harness import INSTALL, wait_until  # noqa: E402

LAUNCH_DIR = os.path.join(INSTALL, "nanovla_ros", "share", "nanovla_ros", "launch")
# what `ros2 launch <file> k:=v ...` does, without needing the ros2 command line
RUNNER = """
import sys
from launch import LaunchDescription, LaunchService
from launch.actions import IncludeLaunchDescription
from launch.launch_description_sources import PythonLaunchDescriptionSource
arguments = [a.split(":=", 1) for a in sys.argv[2:]]
service = LaunchService()
service.include_launch_description(LaunchDescription([
    IncludeLaunchDescription(PythonLaunchDescriptionSource(sys.argv[1]), launch_arguments=arguments)]))
sys.exit(service.run())
"""


class Launch:
    def __init__(self, env: dict, launch_file: str, **arguments):
        self.output: list[str] = []
        self._params_before = set(glob.glob("/tmp/launch_params_*"))
        cmd = [sys.executable, "-c", RUNNER, os.path.join(LAUNCH_DIR, launch_file)]
        cmd += [f"{k}:={v}" for k, v in arguments.items()]
        self.proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     start_new_session=True,
                                     preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            self.output.append(line.rstrip())

    def lines(self, pattern: str) -> list[str]:
        return [line for line in list(self.output) if re.search(pattern, line)]

    def stop(self) -> int:
        """Ctrl-C as a user would: launch stops its nodes cleanly on SIGINT."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        for path in set(glob.glob("/tmp/launch_params_*")) - self._params_before:
            os.unlink(path)
        return self.proc.returncode


@pytest.fixture(scope="module")
def model(long_answer_checkpoint):
    return long_answer_checkpoint


def test_demo_launch_runs_the_pipeline_and_stops_cleanly(ros_env, model):
    run = Launch(ros_env, "demo.launch.py", namespace="launch_demo", model=model, rate_hz="10.0")
    try:
        wait_until(lambda: len(run.lines(r"\[printer-\d+\] \[\d+\.\d{9} camera\]")) >= 3, 90,
                   message="three printed descriptions")
        assert run.lines(r"describer\]: active: describing /launch_demo/image")
    finally:
        code = run.stop()
    assert code == 0, "\n".join(run.output[-30:])
    assert len(run.lines(r"process has finished cleanly")) == 3, "\n".join(run.output[-30:])


def test_vla_launch_remaps_the_camera_topic_in_a_namespace(ros_env, model, client):
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import Image

    from nanovla.data.scenes import generate
    from nanovla_msgs.msg import SceneDescription
    from nanovla_ros.image_conversion import rgb_to_image_fields

    got = []
    client.node.create_subscription(SceneDescription, "/front/description", got.append, 10)
    pub = client.node.create_publisher(Image, "/robot/front_camera/image_raw", qos_profile_sensor_data)
    run = Launch(ros_env, "vla.launch.py", namespace="front", image="/robot/front_camera/image_raw", model=model)
    try:
        h, w, step, data = rgb_to_image_fields(generate("eval", 5, 0)[0], "bgr8")
        deadline = time.monotonic() + 90
        while not got and time.monotonic() < deadline:
            msg = Image(height=h, width=w, encoding="bgr8", step=step)
            msg.data = data
            msg.header.stamp, msg.header.frame_id = client.node.get_clock().now().to_msg(), "front_camera"
            pub.publish(msg)
            time.sleep(0.3)
        assert got and got[0].header.frame_id == "front_camera", "\n".join(run.output[-30:])
    finally:
        assert run.stop() == 0


def test_multi_camera_launch_gives_each_camera_its_own_describer(ros_env, model, client):
    from nanovla_msgs.msg import SceneDescription

    got = {"mc_left": [], "mc_right": []}
    for camera in got:
        client.node.create_subscription(SceneDescription, f"/{camera}/description", got[camera].append, 10)
    params = os.path.join(INSTALL, "nanovla_ros", "share", "nanovla_ros", "config", "params.yaml")
    overrides = os.path.join(os.environ.get("ROS_LOG_DIR", "/tmp"), "multi_camera_params.yaml")
    with open(params) as f, open(overrides, "w") as out:  # the same file, with this test's model
        out.write(f.read().replace('model: ""', f'model: "{model}"'))
    run = Launch(ros_env, "multi_camera.launch.py", cameras="mc_left,mc_right", params_file=overrides)
    try:
        wait_until(lambda: all(got.values()), 120, message="descriptions from both cameras")
        assert {m.header.frame_id for m in got["mc_left"]} == {"mc_left_camera"}
        assert {m.header.frame_id for m in got["mc_right"]} == {"mc_right_camera"}
    finally:
        assert run.stop() == 0, "\n".join(run.output[-30:])
