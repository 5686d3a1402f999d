"""Frame conversion and the one-frame slot, in-process (no DDS): exact pixels for every encoding,
row padding, and one-line reasons for bad frames."""

from __future__ import annotations

import os
import sys
import threading

import cv2
import numpy as np
import pytest

pytestmark = pytest.mark.ros

pytest.importorskip("sensor_msgs.msg", reason="ROS 2 message wheels are not installed (scripts/ros_setup.sh)")
from sensor_msgs.msg import CompressedImage, Image  # noqa: E402

# the package from its source tree; the path is removed again at once, or its launch/ folder would
# shadow the real `launch` package as a namespace package
_SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "ros2_ws", "src", "nanovla_ros")
sys.path.insert(0, _SOURCE)
try:
    from nanovla_ros.frame_slot import Frame, FrameSlot  # noqa: E402
    from nanovla_ros.image_conversion import (  # noqa: E402
        ENCODINGS, FrameError, compressed_to_rgb, image_to_rgb, rgb_to_compressed_data, rgb_to_image_fields)
finally:
    sys.path.remove(_SOURCE)

RNG = np.random.default_rng(0)
RGB = RNG.integers(0, 256, (48, 64, 3), dtype=np.uint8)


def image_msg(rgb, encoding, padding=0) -> Image:
    h, w, step, data = rgb_to_image_fields(rgb, encoding, padding)
    msg = Image(height=h, width=w, encoding=encoding, step=step)
    msg.data = data
    return msg


@pytest.mark.parametrize("padding", [0, 5])
@pytest.mark.parametrize("encoding", list(ENCODINGS))
def test_every_encoding_round_trips_exactly(encoding, padding):
    msg = image_msg(RGB, encoding, padding)
    assert msg.step == 64 * ENCODINGS[encoding][0] + padding
    out = image_to_rgb(msg)
    expected = cv2.cvtColor(cv2.cvtColor(RGB, cv2.COLOR_RGB2GRAY), cv2.COLOR_GRAY2RGB) if encoding == "mono8" else RGB
    assert out.shape == (48, 64, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, expected)


def test_channel_order_is_honoured():
    red = np.zeros((16, 16, 3), np.uint8)
    red[..., 0] = 255
    bgr = Image(height=16, width=16, encoding="bgr8", step=48)
    bgr.data = red.tobytes()  # bytes that mean red in rgb8 mean blue in bgr8
    assert image_to_rgb(bgr)[0, 0].tolist() == [0, 0, 255]


@pytest.mark.parametrize("fmt", ["jpeg", "png"])
def test_compressed(fmt):
    msg = CompressedImage(format=fmt)
    msg.data = rgb_to_compressed_data(RGB, fmt)
    out = compressed_to_rgb(msg)
    assert out.shape == RGB.shape
    if fmt == "png":
        np.testing.assert_array_equal(out, RGB)


def bad(encoding="rgb8", width=64, height=48, step=None, data=None) -> Image:
    msg = Image(height=height, width=width, encoding=encoding, step=width * 3 if step is None else step)
    msg.data = bytes(height * msg.step) if data is None else data
    return msg


@pytest.mark.parametrize("msg, reason", [
    (bad(encoding="yuv422"), r"unsupported encoding 'yuv422'"),
    (bad(data=bytes(100)), r"data has 100 bytes, expected height\*step = 9216"),
    (bad(width=0, height=0), r"empty frame"),
    (bad(step=10), r"step 10 is less than width\*channels"),
    (bad(width=7072, height=7072, data=bytes(10)), r"7072x7072 frame exceeds"),
])
def test_bad_raw_frames_give_one_line_reasons(msg, reason):
    with pytest.raises(FrameError, match=reason) as e:
        image_to_rgb(msg)
    assert "\n" not in str(e.value)


def test_bad_compressed_frames():
    corrupt = CompressedImage(format="jpeg")
    corrupt.data = rgb_to_compressed_data(RGB, "jpeg")[:200]
    with pytest.raises(FrameError, match="not a decodable image"):
        compressed_to_rgb(corrupt)
    huge = CompressedImage(format="png")
    ok, buf = cv2.imencode(".png", np.zeros((7072, 7072), np.uint8))  # 50 MP, ~50 KB encoded
    huge.data = buf.tobytes()
    with pytest.raises(FrameError, match="7072x7072 image exceeds"):
        compressed_to_rgb(huge)


def test_slot_keeps_only_the_newest_frame():
    slot = FrameSlot()
    for i in range(100):
        slot.put(Frame(i, None, False, 0.0))
    assert slot.take(0.0).seq == 99
    assert slot.replaced == 99
    assert slot.take(0.01) is None


def test_slot_wakes_a_waiting_worker_and_close_releases_it():
    slot = FrameSlot()
    got = []
    worker = threading.Thread(target=lambda: got.append(slot.take(5.0)))
    worker.start()
    slot.put(Frame(1, None, False, 0.0))
    worker.join(2.0)
    assert got and got[0].seq == 1
    worker = threading.Thread(target=lambda: got.append(slot.take(5.0)))
    worker.start()
    slot.close()
    worker.join(2.0)
    assert not worker.is_alive() and got[-1] is None
