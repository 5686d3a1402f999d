"""A one-frame mailbox between the subscription callbacks and the inference worker.

A camera at 30 FPS and a model at 3 descriptions/s must not build a queue: `put` replaces a frame
the worker has not taken yet (counted as dropped), so the worker always takes the newest one and
memory stays at one frame whatever the camera rate."""

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


class FrameSlot:
    def __init__(self):
        self._cond = threading.Condition()
        self._frame: Frame | None = None
        self._closed = False
        self.replaced = 0  # frames overwritten before the worker took them

    def put(self, frame: Frame) -> None:
        with self._cond:
            if self._frame is not None:
                self.replaced += 1
            self._frame = frame
            self._cond.notify()

    def take(self, timeout: float) -> Frame | None:
        """The newest frame (emptying the slot), or None after `timeout` s or once closed."""
        with self._cond:
            if self._frame is None and not self._closed:
                self._cond.wait(timeout)
            frame, self._frame = self._frame, None
            return frame

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._frame = None
            self._cond.notify_all()

    def reopen(self) -> None:
        with self._cond:
            self._closed = False
            self._frame = None
