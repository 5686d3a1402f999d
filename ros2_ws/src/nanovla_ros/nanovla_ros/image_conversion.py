"""sensor_msgs/Image and CompressedImage <-> RGB numpy frames (no cv_bridge: it has no wheels).

Every failure is a FrameError with a one-line reason; the describer logs it, counts it in
/diagnostics and keeps serving."""

from __future__ import annotations

import array

import cv2
import numpy as np

from nanovla.runtime.preprocess import MAX_IMAGE_PIXELS, ImageError, decode_image

# encoding -> (channels, OpenCV conversion to RGB or None when already RGB)
ENCODINGS: dict[str, tuple[int, int | None]] = {
    "rgb8": (3, None),
    "bgr8": (3, cv2.COLOR_BGR2RGB),
    "mono8": (1, cv2.COLOR_GRAY2RGB),
    "rgba8": (4, cv2.COLOR_RGBA2RGB),
    "bgra8": (4, cv2.COLOR_BGRA2RGB),
}
# RGB -> encoding (camera side)
_FROM_RGB: dict[str, int | None] = {
    "rgb8": None,
    "bgr8": cv2.COLOR_RGB2BGR,
    "mono8": cv2.COLOR_RGB2GRAY,
    "rgba8": cv2.COLOR_RGB2RGBA,
    "bgra8": cv2.COLOR_RGB2BGRA,
}


class FrameError(ValueError):
    """A frame that cannot be used; the message is one line."""


def image_to_rgb(msg) -> np.ndarray:
    """sensor_msgs/Image -> (H, W, 3) uint8 RGB, honouring `step` (row padding).

    Checks size before touching the data, so a huge or truncated frame costs nothing."""
    encoding = msg.encoding.lower()
    if encoding not in ENCODINGS:
        raise FrameError(f"unsupported encoding {msg.encoding!r}; supported: {', '.join(ENCODINGS)}")
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    if height == 0 or width == 0:
        raise FrameError(f"empty frame ({width}x{height})")
    if height * width > MAX_IMAGE_PIXELS:
        raise FrameError(f"{width}x{height} frame exceeds {MAX_IMAGE_PIXELS} pixels")
    channels, conversion = ENCODINGS[encoding]
    if step < width * channels:
        raise FrameError(f"step {step} is less than width*channels = {width * channels} for {encoding}")
    size = len(msg.data)
    if size < height * step:
        raise FrameError(f"data has {size} bytes, expected height*step = {height * step}")
    rows = np.frombuffer(msg.data, dtype=np.uint8, count=height * step).reshape(height, step)
    pixels = rows[:, : width * channels].reshape(height, width, channels)  # drops the padding, no copy
    if conversion is None:
        return np.ascontiguousarray(pixels)
    return cv2.cvtColor(pixels if channels > 1 else pixels[:, :, 0], conversion)


def compressed_to_rgb(msg) -> np.ndarray:
    """sensor_msgs/CompressedImage (JPEG or PNG) -> (H, W, 3) uint8 RGB."""
    data = np.frombuffer(msg.data, dtype=np.uint8)
    try:
        return decode_image(data, name=f"compressed frame ({msg.format or 'no format'})")
    except ImageError as e:
        raise FrameError(str(e)) from None


def rgb_to_image_fields(rgb: np.ndarray, encoding: str, padding: int = 0) -> tuple[int, int, int, array.array]:
    """RGB frame -> (height, width, step, data) for a sensor_msgs/Image; `padding` bytes per row
    (zero) exercise subscribers' handling of `step`."""
    if encoding not in _FROM_RGB:
        raise FrameError(f"unsupported encoding {encoding!r}; supported: {', '.join(_FROM_RGB)}")
    conversion = _FROM_RGB[encoding]
    pixels = rgb if conversion is None else cv2.cvtColor(rgb, conversion)
    height, width = pixels.shape[:2]
    rows = pixels.reshape(height, -1)
    if padding:
        rows = np.concatenate([rows, np.zeros((height, padding), np.uint8)], axis=1)
    # array('B', bytes) copies with memcpy; assigning a list or bytes to msg.data is checked per element
    return height, width, rows.shape[1], array.array("B", np.ascontiguousarray(rows).tobytes())


def rgb_to_compressed_data(rgb: np.ndarray, fmt: str = "jpeg", jpeg_quality: int = 90) -> array.array:
    if fmt not in ("jpeg", "png"):
        raise FrameError(f"unsupported compressed format {fmt!r}; use jpeg or png")
    bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    params = [cv2.IMWRITE_JPEG_QUALITY, int(jpeg_quality)] if fmt == "jpeg" else []
    ok, buf = cv2.imencode(".jpg" if fmt == "jpeg" else ".png", bgr, params)
    if not ok:
        raise FrameError(f"could not encode the frame as {fmt}")
    return array.array("B", buf.tobytes())
