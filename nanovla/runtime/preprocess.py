"""Image loading and preprocessing with numpy and OpenCV only (shared by every backend, so the
robot-side runtime needs no PyTorch)."""

from __future__ import annotations

import os

import cv2
import numpy as np

MAX_IMAGE_PIXELS = 40_000_000  # larger frames are refused (a 50 MP frame is almost surely a fault)


class ImageError(ValueError):
    """An image that cannot be used; the message is one line and names the file."""


def load_image(path: str) -> np.ndarray:
    """Read an image file as (H, W, 3) uint8 RGB; a clear ImageError otherwise."""
    if not os.path.exists(path):
        raise ImageError(f"{path}: no such file")
    if os.path.isdir(path):
        raise ImageError(f"{path}: is a directory, not an image")
    data = np.fromfile(path, dtype=np.uint8)
    if data.size == 0:
        raise ImageError(f"{path}: empty file")
    return decode_image(data, name=path)


def decode_image(data: np.ndarray | bytes, name: str = "image") -> np.ndarray:
    """Decode encoded bytes (PNG, JPEG, ...) to (H, W, 3) uint8 RGB."""
    buf = np.frombuffer(data, dtype=np.uint8) if isinstance(data, (bytes, bytearray, memoryview)) else data
    if buf.size == 0:
        raise ImageError(f"{name}: empty data")
    size = encoded_size(buf)  # refuse a huge image before allocating it
    if size is not None and size[0] * size[1] > MAX_IMAGE_PIXELS:
        raise ImageError(f"{name}: {size[0]}x{size[1]} image exceeds {MAX_IMAGE_PIXELS} pixels")
    try:
        bgr = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    except cv2.error:
        bgr = None
    if bgr is None:
        raise ImageError(f"{name}: not a decodable image (corrupt or not an image file)")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def encoded_size(buf: np.ndarray) -> tuple[int, int] | None:
    """(width, height) from a PNG or JPEG header without decoding; None for other formats."""
    b = buf[:65536].tobytes()
    if b[:8] == b"\x89PNG\r\n\x1a\n" and len(b) >= 24:
        return int.from_bytes(b[16:20], "big"), int.from_bytes(b[20:24], "big")
    if b[:2] == b"\xff\xd8":
        i = 2
        while i + 9 < len(b):
            if b[i] != 0xFF:
                return None
            marker, length = b[i + 1], int.from_bytes(b[i + 2:i + 4], "big")
            if marker in (0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF):
                return int.from_bytes(b[i + 7:i + 9], "big"), int.from_bytes(b[i + 5:i + 7], "big")
            i += 2 + length
    return None


def check_rgb(image: np.ndarray, name: str = "image") -> np.ndarray:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        shape = getattr(image, "shape", None)
        raise ImageError(f"{name}: expected an (H, W, 3) uint8 RGB array, got {shape} {getattr(image, 'dtype', '')}")
    h, w = image.shape[:2]
    if h < 8 or w < 8:
        raise ImageError(f"{name}: {w}x{h} is too small (at least 8x8)")
    if h * w > MAX_IMAGE_PIXELS:
        raise ImageError(f"{name}: {w}x{h} exceeds {MAX_IMAGE_PIXELS} pixels")
    return image


def preprocess(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """RGB uint8 (H, W, 3) -> float32 (1, 3, height, width) in 0..1 (resize, no crop).

    Mean/std normalisation happens inside the model graph, so every backend takes the same input."""
    image = check_rgb(image)
    if image.shape[:2] != (height, width):
        interp = cv2.INTER_AREA if image.shape[0] > height else cv2.INTER_LINEAR
        image = cv2.resize(image, (width, height), interpolation=interp)
    x = image.astype(np.float32) * (1.0 / 255.0)
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None])


def resize_uint8(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize as `preprocess` does but keep uint8 HWC (for compact training caches)."""
    if image.shape[:2] == (height, width):
        return image
    interp = cv2.INTER_AREA if image.shape[0] > height else cv2.INTER_LINEAR
    return cv2.resize(image, (width, height), interpolation=interp)
