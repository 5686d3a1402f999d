"""`nanovla serve`: the HTTP API and page of nanovla/serve/ (the [serve] extra; no torch)."""

from __future__ import annotations

from ..serve.app import serve
from .common import CLIError, load_runtime_from_args, log


def cmd_serve(args) -> int:
    if args.ros_topic:  # before the model loads: a missing rclpy is a one-line error at once
        try:
            from ..serve import ros_camera  # noqa: F401  (rclpy, an optional dependency: checked only here)
        except ImportError as e:
            raise CLIError(str(e)) from None
    if not 0 < args.port < 65536 or args.queue_size < 1 or args.max_body_mb <= 0 or args.max_new_tokens < 1:
        raise CLIError("--port must be 1..65535, and --queue-size, --max-body-mb, --max-new-tokens positive")
    runtime = load_runtime_from_args(args)
    serve(runtime, args.host, args.port, ros_topic=args.ros_topic, queue_size=args.queue_size,
          max_body_bytes=int(args.max_body_mb * 1024 * 1024), max_tokens=args.max_new_tokens, log=log)
    return 0
