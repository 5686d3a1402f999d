"""The camera view of `nanovla serve --ros-topic T`: a ROS 2 node in a background thread that
keeps only the newest frame of T (sensor_msgs/Image, or CompressedImage when T ends in
`/compressed`), re-encoded as JPEG so the page can show it and ask about exactly those bytes.

Imported only with --ros-topic: it needs rclpy and the nanovla_ros package (scripts/ros_setup.sh
installs both; source ros2_ws/install/setup.bash), whose frame conversion it shares.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import cv2
import numpy as np

try:
    import rclpy
    from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
    from rclpy.node import Node
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import CompressedImage, Image

    from nanovla_ros.image_conversion import compressed_to_rgb, image_to_rgb
except ImportError as e:  # one line for the CLI, not a traceback
    raise ImportError(f"--ros-topic needs rclpy and nanovla_ros ({e}); run scripts/ros_setup.sh and "
                      "source ros2_ws/install/setup.bash") from None


@dataclass
class CameraFrame:
    seq: int  # arrival number (1, 2, ...)
    rgb: np.ndarray  # (H, W, 3) uint8
    jpeg: bytes  # what /ros/frame.jpg serves and what the context cache is keyed by


class RosCamera:
    def __init__(self, topic: str, jpeg_quality: int = 90):
        self.topic = topic
        self.jpeg_quality = jpeg_quality
        self.received = 0
        self.errors = 0
        self.last_error = ""
        self._frame: CameraFrame | None = None
        self._lock = threading.Lock()
        self._owns_context = not rclpy.ok()
        if self._owns_context:
            rclpy.init()
        self.node = Node("nanovla_serve")
        compressed = topic.rstrip("/").endswith("/compressed")
        self.node.create_subscription(CompressedImage if compressed else Image, topic,
                                      lambda msg: self._on_frame(msg, compressed), qos_profile_sensor_data)
        self.executor = SingleThreadedExecutor()
        self.executor.add_node(self.node)
        self._thread = threading.Thread(target=self._spin, name="nanovla-ros-camera", daemon=True)
        self._thread.start()

    def _spin(self) -> None:
        try:
            self.executor.spin()
        except ExternalShutdownException:
            pass

    def _on_frame(self, msg, compressed: bool) -> None:
        try:
            rgb = compressed_to_rgb(msg) if compressed else image_to_rgb(msg)
            ok, jpeg = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR),
                                    [cv2.IMWRITE_JPEG_QUALITY, self.jpeg_quality])
            if not ok:
                raise ValueError("JPEG encoding failed")
        except ValueError as e:  # a bad frame is counted and shown on the page; the next one may be fine
            self.errors += 1
            self.last_error = str(e)
            return
        with self._lock:
            self.received += 1
            self._frame = CameraFrame(self.received, rgb, jpeg.tobytes())

    def newest(self) -> CameraFrame | None:
        with self._lock:
            return self._frame

    def close(self) -> None:
        self.executor.shutdown()
        self.node.destroy_node()
        if self._owns_context and rclpy.ok():
            rclpy.shutdown()
        self._thread.join(2.0)
