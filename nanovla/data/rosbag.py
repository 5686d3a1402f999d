"""rosbag2 camera topics to a nanovla data directory, with the `rosbags` library (no ROS install).

    nanovla data from-rosbag BAG --topic /camera/image_raw --out DIR [--every N]

writes DIR/images/<n>.png|.jpg and DIR/data.jsonl, one line per kept frame:

    {"image": "images/000000.png", "stamp": {"sec": 17, "nanosec": 5000}, "frame_id": "camera",
     "encoding": "rgb8", "bag_time_ns": 1700000000000}

`describe`, `ask --questions` and `eval` read that directory. Frames are written losslessly:
sensor_msgs/Image as PNG with every pixel as recorded (8-bit colour as RGB, mono8 as grey,
16-bit mono/depth as 16-bit PNG; Bayer and YUV are converted to RGB by OpenCV first), and
sensor_msgs/CompressedImage as the recorded bytes unchanged (.jpg stays .jpg). A frame that cannot be
read is skipped and counted, never ends the conversion.
"""

from __future__ import annotations

import json
import os
import time

import cv2
import numpy as np

from ..runtime.preprocess import ImageError, decode_image

IMAGE_TYPES = ("sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage")

# encoding -> (dtype, channels, cv2 conversion to RGB or None when stored as is)
ENCODINGS = {
    "rgb8": (np.uint8, 3, None), "bgr8": (np.uint8, 3, cv2.COLOR_BGR2RGB), "8UC3": (np.uint8, 3, cv2.COLOR_BGR2RGB),
    "rgba8": (np.uint8, 4, cv2.COLOR_RGBA2RGB), "bgra8": (np.uint8, 4, cv2.COLOR_BGRA2RGB),
    "mono8": (np.uint8, 1, None), "8UC1": (np.uint8, 1, None),
    "mono16": (np.uint16, 1, None), "16UC1": (np.uint16, 1, None),
    "bayer_rggb8": (np.uint8, 1, cv2.COLOR_BayerBG2RGB), "bayer_bggr8": (np.uint8, 1, cv2.COLOR_BayerRG2RGB),
    "bayer_gbrg8": (np.uint8, 1, cv2.COLOR_BayerGR2RGB), "bayer_grbg8": (np.uint8, 1, cv2.COLOR_BayerGB2RGB),
    "yuv422": (np.uint8, 2, cv2.COLOR_YUV2RGB_UYVY), "uyvy": (np.uint8, 2, cv2.COLOR_YUV2RGB_UYVY),
    "yuv422_yuy2": (np.uint8, 2, cv2.COLOR_YUV2RGB_YUY2), "yuyv": (np.uint8, 2, cv2.COLOR_YUV2RGB_YUY2),
}


def image_msg_to_array(msg) -> np.ndarray:
    """sensor_msgs/Image -> (H, W, 3) uint8 RGB, (H, W) uint8 or (H, W) uint16; ValueError if unreadable."""
    if msg.encoding not in ENCODINGS:
        raise ValueError(f"unsupported encoding {msg.encoding!r}")
    dtype, channels, conversion = ENCODINGS[msg.encoding]
    itemsize = np.dtype(dtype).itemsize
    row_bytes = msg.width * channels * itemsize
    step = msg.step or row_bytes
    data = np.asarray(msg.data, dtype=np.uint8)
    if step < row_bytes or data.size < step * msg.height or msg.height == 0 or msg.width == 0:
        raise ValueError(f"{msg.width}x{msg.height} {msg.encoding} needs {row_bytes}-byte rows; got step "
                         f"{msg.step} and {data.size} bytes")
    rows = data[: step * msg.height].reshape(msg.height, step)[:, :row_bytes]  # drop row padding
    pixels = np.ascontiguousarray(rows).view(np.dtype(dtype).newbyteorder(">" if msg.is_bigendian else "<"))
    pixels = pixels.astype(dtype).reshape(msg.height, msg.width, channels)
    if channels == 1:
        pixels = pixels[:, :, 0]
    if conversion is not None:
        pixels = cv2.cvtColor(pixels, conversion)
    return pixels


def compressed_extension(msg) -> str:
    fmt = msg.format.lower()
    if "compresseddepth" in fmt:
        raise ValueError("compressedDepth frames are not camera images")
    if "png" in fmt:
        return ".png"
    if "jpeg" in fmt or "jpg" in fmt:
        return ".jpg"
    data = bytes(msg.data[:8])
    if data.startswith(b"\x89PNG"):
        return ".png"
    if data.startswith(b"\xff\xd8"):
        return ".jpg"
    raise ValueError(f"unknown compressed format {msg.format!r}")


def _write_atomic(path: str, data: bytes) -> None:
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def rosbag_to_dataset(bag: str, topic: str, out: str, every: int = 1, log=print) -> dict:
    """Convert one camera topic of a rosbag2 directory; returns a summary dict."""
    try:
        from rosbags.highlevel import AnyReader
        from rosbags.typesys import Stores, get_typestore
    except ImportError:
        raise ImportError("reading rosbags needs the rosbags library: pip install 'nanovla[ros]'") from None
    if every < 1:
        raise ValueError("--every must be >= 1")
    if not os.path.exists(bag):
        raise ValueError(f"{bag}: no such rosbag2 directory")
    from pathlib import Path

    os.makedirs(os.path.join(out, "images"), exist_ok=True)
    t0 = time.perf_counter()
    kept = skipped = seen = 0
    reasons: dict[str, int] = {}
    tmp_jsonl = os.path.join(out, "data.jsonl.tmp")
    try:
        reader_cm = AnyReader([Path(bag)], default_typestore=get_typestore(Stores.ROS2_HUMBLE))
    except Exception as e:  # rosbags raises its own errors for a bad directory
        raise ValueError(f"{bag}: not a readable rosbag2 ({e})") from None
    with reader_cm as reader, open(tmp_jsonl, "w", encoding="utf-8") as jsonl:
        connections = [c for c in reader.connections if c.topic == topic]
        if not connections:
            topics = sorted({f"{c.topic} ({c.msgtype})" for c in reader.connections})
            raise ValueError(f"{bag}: no topic {topic!r}; it has {', '.join(topics) or 'no topics'}")
        if connections[0].msgtype not in IMAGE_TYPES:
            raise ValueError(f"{topic} is {connections[0].msgtype}, not sensor_msgs/Image or CompressedImage")
        for connection, bag_time, raw in reader.messages(connections=connections):
            seen += 1
            if (seen - 1) % every:
                continue
            try:
                msg = reader.deserialize(raw, connection.msgtype)
                name = f"images/{kept:06d}"
                if connection.msgtype.endswith("CompressedImage"):
                    ext = compressed_extension(msg)
                    data = bytes(msg.data)
                    decode_image(data, name=f"frame {seen}")  # refuse what would not decode later
                    _write_atomic(os.path.join(out, name + ext), data)
                    encoding = msg.format
                else:
                    pixels = image_msg_to_array(msg)
                    ext = ".png"
                    bgr = cv2.cvtColor(pixels, cv2.COLOR_RGB2BGR) if pixels.ndim == 3 else pixels
                    ok, buf = cv2.imencode(".png", bgr)  # PNG: lossless, 16-bit kept
                    if not ok:
                        raise ValueError("PNG encoding failed")
                    _write_atomic(os.path.join(out, name + ext), buf.tobytes())
                    encoding = msg.encoding
            except (ValueError, ImageError, KeyError, TypeError) as e:
                skipped += 1
                reason = str(e).split(":")[-1].strip()[:60]
                reasons[reason] = reasons.get(reason, 0) + 1
                continue
            stamp = msg.header.stamp
            row = {"image": name + ext, "stamp": {"sec": int(stamp.sec), "nanosec": int(stamp.nanosec)},
                   "frame_id": msg.header.frame_id, "encoding": encoding, "bag_time_ns": int(bag_time)}
            jsonl.write(json.dumps(row) + "\n")
            kept += 1
    os.replace(tmp_jsonl, os.path.join(out, "data.jsonl"))
    summary = {"bag": bag, "topic": topic, "out": out, "messages": seen, "frames": kept, "skipped": skipped,
               "skip_reasons": reasons, "seconds": round(time.perf_counter() - t0, 2)}
    if log:
        log(f"wrote {kept} frames of {topic} to {out} ({seen} messages, every {every}, {skipped} skipped)")
    return summary
