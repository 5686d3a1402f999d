"""camera_sim: a camera for anywhere (headless, like image_tools' burger mode).

Publishes generated tabletop scenes (a new scene every scene_period_s), or frames from a video
file, an image folder or a V4L2 camera (OpenCV), at rate_hz, as sensor_msgs/Image on `image`
and/or sensor_msgs/CompressedImage on `image/compressed`, stamped at publish time with frame_id.

Large best-effort frames: with Fast DDS's default 0.5 MB shared-memory segment on the publisher,
most 640x480 rgb8 frames never reach another process. Unless FASTDDS_DEFAULT_PROFILES_FILE is
already set, main() points it at this package's config/fastdds_large_frames.xml (a 64 MB segment)
before ROS starts. A real camera driver needs the same setting (see the README).
"""

from __future__ import annotations

import os
import time

import numpy as np
import rclpy
import rclpy.exceptions
from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor, SetParametersResult
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from sensor_msgs.msg import CompressedImage, Image

from .image_conversion import ENCODINGS, rgb_to_compressed_data, rgb_to_image_fields

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
DDS_PROFILE = "fastdds_large_frames.xml"


def _param(text: str, **extra) -> ParameterDescriptor:
    return ParameterDescriptor(description=text, **extra)


PARAMETERS = {
    "source": ("scenes", _param("scenes (generated tabletop scenes), a video file, an image folder, "
                                "or a camera: camera:N or /dev/videoN", read_only=True)),
    "rate_hz": (10.0, _param("frames per second", read_only=True,
                             floating_point_range=[FloatingPointRange(from_value=0.1, to_value=1000.0)])),
    "frame_id": ("camera", _param("header.frame_id of every frame")),
    "encoding": ("rgb8", _param(f"Image encoding: {', '.join(ENCODINGS)}")),
    "transport": ("raw", _param("raw (Image on image), compressed (CompressedImage on image/compressed) or both",
                                read_only=True)),
    "compressed_format": ("jpeg", _param("jpeg or png")),
    "jpeg_quality": (90, _param("JPEG quality", integer_range=[IntegerRange(from_value=1, to_value=100, step=1)])),
    "width": (0, _param("resize frames to this width; 0 = as the source gives them", read_only=True)),
    "height": (0, _param("resize frames to this height; 0 = as the source gives them", read_only=True)),
    "scene_period_s": (2.0, _param("scenes source: seconds each generated scene stays in view")),
    "split": ("eval", _param("scenes source: generator split", read_only=True)),
    "seed": (0, _param("scenes source: generator seed", read_only=True)),
    "loop": (True, _param("video/folder source: start again at the end", read_only=True)),
    "step_padding": (0, _param("bytes of padding added to each row (tests subscribers' handling of step)")),
    "max_frames": (0, _param("stop after this many frames; 0 = never", read_only=True)),
    "reliability": ("best_effort", _param("best_effort (sensor data QoS) or reliable", read_only=True)),
    "wait_for_subscribers": (0, _param("publish nothing until this many subscriptions are matched (benchmarks, "
                                       "tests: no frame is lost to discovery); 0 = start at once", read_only=True)),
}


class FrameSource:
    """Yields (rgb, label) frames; label names what is in view (scene objects or file name)."""

    def __init__(self, source: str, split: str, seed: int, scene_period_s: float, loop: bool):
        self.source, self.split, self.seed, self.loop = source, split, seed, loop
        self.scene_period_s = scene_period_s
        self._start = time.monotonic()
        self._scene_index = -1
        self._scene = None
        self._capture = None
        self._files: list[str] = []
        self._file_index = 0
        if source == "scenes":
            pass
        elif source.startswith("camera:") or source.startswith("/dev/video"):
            import cv2

            device = int(source.split(":", 1)[1]) if source.startswith("camera:") else source
            self._capture = cv2.VideoCapture(device)
            if not self._capture.isOpened():
                raise ValueError(f"cannot open camera {source!r}")
        elif os.path.isdir(source):
            self._files = sorted(os.path.join(source, f) for f in os.listdir(source)
                                 if f.lower().endswith(IMAGE_SUFFIXES))
            if not self._files:
                raise ValueError(f"{source}: no {'/'.join(IMAGE_SUFFIXES)} images in this folder")
        elif os.path.isfile(source):
            import cv2

            self._capture = cv2.VideoCapture(source)
            if not self._capture.isOpened():
                raise ValueError(f"{source}: not a video OpenCV can read")
        else:
            raise ValueError(f"{source!r}: not 'scenes', a camera, an image folder or a video file")

    def next(self) -> tuple[np.ndarray, str] | None:
        if self.source == "scenes":
            index = int((time.monotonic() - self._start) / self.scene_period_s)
            if index != self._scene_index:  # a new scene: generating one takes ~50 ms, so not every frame
                from nanovla.data.scenes import generate

                rgb, scene = generate(self.split, self.seed, index)
                label = ", ".join(o.name for o in scene.objects) or "an empty table"
                self._scene_index, self._scene = index, (rgb, label)
            return self._scene
        if self._files:
            if self._file_index >= len(self._files):
                if not self.loop:
                    return None
                self._file_index = 0
            from nanovla.runtime.preprocess import load_image

            path = self._files[self._file_index]
            self._file_index += 1
            return load_image(path), os.path.basename(path)
        import cv2

        ok, bgr = self._capture.read()
        if not ok and self.loop and not self.source.startswith(("camera:", "/dev/video")):
            self._capture.set(cv2.CAP_PROP_POS_FRAMES, 0)
            ok, bgr = self._capture.read()
        if not ok:
            return None
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), self.source

    def close(self) -> None:
        if self._capture is not None:
            self._capture.release()


class CameraSim(Node):
    def __init__(self, **kwargs):
        super().__init__("camera_sim", **kwargs)
        self.add_on_set_parameters_callback(self._validate)
        for name, (default, descriptor) in PARAMETERS.items():
            self.declare_parameter(name, default, descriptor)
        p = self._p
        self._source = FrameSource(p("source"), p("split"), p("seed"), p("scene_period_s"), p("loop"))
        qos = QoSProfile(history=qos_profile_sensor_data.history, depth=qos_profile_sensor_data.depth,
                         reliability=(ReliabilityPolicy.RELIABLE if p("reliability") == "reliable"
                                      else ReliabilityPolicy.BEST_EFFORT),
                         durability=qos_profile_sensor_data.durability)
        transport = p("transport")
        self._image_pub = self.create_publisher(Image, "image", qos) if transport in ("raw", "both") else None
        self._compressed_pub = (self.create_publisher(CompressedImage, "image/compressed", qos)
                                if transport in ("compressed", "both") else None)
        self._published = 0
        self._cache_key = None  # the converted payload is reused while the frame does not change
        self._image_fields = None
        self._compressed_data = None
        self._last_label = None
        self._matched_at = None
        self._timer = self.create_timer(1.0 / p("rate_hz"), self._tick)
        self.get_logger().info(f"publishing {p('source')} at {p('rate_hz'):g} Hz as {transport} "
                               f"({p('encoding')}) with frame_id {p('frame_id')!r}")

    def _p(self, name):
        return self.get_parameter(name).value

    def _validate(self, parameters) -> SetParametersResult:
        for param in parameters:
            v = param.value
            reason = None
            if param.name == "encoding" and v not in ENCODINGS:
                reason = f"unsupported encoding {v!r}; supported: {', '.join(ENCODINGS)}"
            elif param.name == "transport" and v not in ("raw", "compressed", "both"):
                reason = f"{v!r}: use raw, compressed or both"
            elif param.name == "compressed_format" and v not in ("jpeg", "png"):
                reason = f"{v!r}: use jpeg or png"
            elif param.name == "reliability" and v not in ("best_effort", "reliable"):
                reason = f"{v!r}: use best_effort or reliable"
            elif param.name in ("width", "height", "step_padding", "max_frames") and v < 0:
                reason = "must be >= 0"
            elif param.name == "scene_period_s" and not v > 0:
                reason = "must be > 0"
            elif param.name == "frame_id" and not v:
                reason = "empty frame_id"
            if reason:
                return SetParametersResult(successful=False, reason=f"{param.name}: {reason}")
        return SetParametersResult(successful=True)

    def _ready(self) -> bool:
        """True once wait_for_subscribers subscriptions are matched (and had 0.5 s to match back)."""
        wanted = self._p("wait_for_subscribers")
        if not wanted or self._matched_at is not None and time.monotonic() - self._matched_at > 0.5:
            return True
        pub = self._image_pub or self._compressed_pub
        if pub.get_subscription_count() < wanted:
            self._matched_at = None
        elif self._matched_at is None:
            self._matched_at = time.monotonic()
            self.get_logger().info(f"{pub.get_subscription_count()} subscriptions matched; publishing")
        return False

    def _tick(self) -> None:
        if not self._ready():
            return
        item = self._source.next()
        if item is None:
            self.get_logger().info(f"source ended after {self._published} frames")
            raise SystemExit(0)
        rgb, label = item
        width, height = self._p("width"), self._p("height")
        key = (id(rgb), self._p("encoding"), self._p("step_padding"), self._p("compressed_format"),
               self._p("jpeg_quality"))
        if key != self._cache_key:
            if width and height and rgb.shape[:2] != (height, width):
                import cv2

                rgb = cv2.resize(rgb, (width, height), interpolation=cv2.INTER_LINEAR)
            self._image_fields = (rgb_to_image_fields(rgb, self._p("encoding"), self._p("step_padding"))
                                  if self._image_pub else None)
            self._compressed_data = (rgb_to_compressed_data(rgb, self._p("compressed_format"), self._p("jpeg_quality"))
                                     if self._compressed_pub else None)
            self._cache_key = key if self._source.source == "scenes" else None
        if label != self._last_label:
            self.get_logger().info(f"in view: {label}")
            self._last_label = label
        stamp = self.get_clock().now().to_msg()
        frame_id = self._p("frame_id")
        if self._image_pub is not None:
            h, w, step, data = self._image_fields
            msg = Image(height=h, width=w, encoding=self._p("encoding"), is_bigendian=0, step=step)
            msg.data = data
            msg.header.stamp, msg.header.frame_id = stamp, frame_id
            self._image_pub.publish(msg)
        if self._compressed_pub is not None:
            msg = CompressedImage(format=self._p("compressed_format"))
            msg.data = self._compressed_data
            msg.header.stamp, msg.header.frame_id = stamp, frame_id
            self._compressed_pub.publish(msg)
        self._published += 1
        if self._p("max_frames") and self._published >= self._p("max_frames"):
            self.get_logger().info(f"published {self._published} frames; stopping (max_frames)")
            raise SystemExit(0)

    def close(self) -> None:
        self._source.close()


def use_large_frame_profile() -> None:
    """Point Fast DDS at the large shared-memory profile unless the user chose a profile already."""
    if os.environ.get("FASTDDS_DEFAULT_PROFILES_FILE"):
        return
    try:
        from ament_index_python.packages import get_package_share_directory

        path = os.path.join(get_package_share_directory("nanovla_ros"), "config", DDS_PROFILE)
    except Exception:
        return
    if os.path.isfile(path):
        os.environ["FASTDDS_DEFAULT_PROFILES_FILE"] = path


def main(args=None):
    use_large_frame_profile()
    rclpy.init(args=args)
    node = None
    code = 0
    try:
        node = CameraSim()
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except SystemExit as e:
        code = e.code or 0
    except (ValueError, rclpy.exceptions.InvalidParameterValueException) as e:  # bad source or parameter
        print(f"camera_sim: {e}", flush=True)
        code = 2
    except Exception:
        if rclpy.ok():
            raise  # otherwise: Ctrl-C shut the context down while a frame was being published
    finally:
        if node is not None:
            node.close()
            node.destroy_node()
        rclpy.try_shutdown()
    raise SystemExit(code)


if __name__ == "__main__":
    main()
