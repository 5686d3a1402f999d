"""A one-frame-per-camera mailbox between the subscription callbacks and the inference worker.

A camera at 30 FPS and a model at 3 descriptions/s must not build a queue: `put` replaces a frame
of the same camera the worker has not taken yet (counted as dropped), so the worker always takes
each camera's newest one and memory stays at one frame per camera whatever the camera rates."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any


@dataclass
class Frame:
    seq: int  # arrival number, unique per node (keys the cached image context)
    msg: Any  # sensor_msgs/Image or sensor_msgs/CompressedImage, as received
    compressed: bool
    received_monotonic: float
    camera: int = 0  # which of the node's cameras (input topics) it came from


class FrameSlot:
    """One frame per camera: the newest of each, until the worker takes them all at once."""

    def __init__(self, cameras: int = 1):
        self._cond = threading.Condition()
        self._frames: list[Frame | None] = [None] * cameras
        self._closed = False
        self.replaced = 0  # frames overwritten before the worker took them

    def put(self, frame: Frame) -> None:
        with self._cond:
            if self._frames[frame.camera] is not None:
                self.replaced += 1
            self._frames[frame.camera] = frame
            self._cond.notify()

    def take_all(self, timeout: float) -> list[Frame]:
        """Each camera's newest frame, in camera order (emptying the slot); waits up to `timeout` s
        for the first one; [] after the timeout or once closed."""
        with self._cond:
            if not any(self._frames) and not self._closed:
                self._cond.wait(timeout)
            frames = [f for f in self._frames if f is not None]
            self._frames = [None] * len(self._frames)
            return frames

    def take(self, timeout: float) -> Frame | None:
        """The newest frame (one camera: its newest), emptying the slot, or None after `timeout` s
        or once closed."""
        frames = self.take_all(timeout)
        return max(frames, key=lambda f: f.seq) if frames else None

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._frames = [None] * len(self._frames)
            self._cond.notify_all()

    def reopen(self, cameras: int | None = None) -> None:
        with self._cond:
            self._closed = False
            self._frames = [None] * (cameras or len(self._frames))
