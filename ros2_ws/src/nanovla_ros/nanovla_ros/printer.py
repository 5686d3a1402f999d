"""printer: prints the stamped descriptions of a describer on the console."""

from __future__ import annotations

import rclpy
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node

from nanovla_msgs.msg import SceneDescription


def format_description(msg: SceneDescription) -> str:
    stamp = f"{msg.header.stamp.sec}.{msg.header.stamp.nanosec:09d}"
    return (f"[{stamp} {msg.header.frame_id}] {msg.text}  "
            f"({msg.latency_s * 1000:.0f} ms, frame age {msg.frame_age_s * 1000:.0f} ms)")


class Printer(Node):
    def __init__(self, **kwargs):
        super().__init__("printer", **kwargs)
        self.declare_parameter("max_count", 0, ParameterDescriptor(
            description="exit after printing this many descriptions; 0 = never", read_only=True))
        self._count = 0
        self._max = self.get_parameter("max_count").value
        self.create_subscription(SceneDescription, "description", self._on_description, 10)

    def _on_description(self, msg: SceneDescription) -> None:
        print(format_description(msg), flush=True)
        self._count += 1
        if self._max and self._count >= self._max:
            raise SystemExit(0)


def main(args=None):
    rclpy.init(args=args)
    node = None
    code = 0
    try:
        node = Printer()
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except SystemExit as e:
        code = e.code or 0
    finally:
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()
    raise SystemExit(code)


if __name__ == "__main__":
    main()
