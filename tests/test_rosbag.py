"""A rosbag2 written by the test (rosbags, no ROS install) round-trips into a data directory:
raw frames pixel-exact as PNG, compressed frames byte-exact, stamps and frame ids kept."""

from __future__ import annotations

import json
import os

import cv2
import numpy as np
import pytest

pytest.importorskip("rosbags")


def _write_bag(path, frames, compressed):
    from rosbags.rosbag2 import Writer
    from rosbags.typesys import Stores, get_typestore

    ts = get_typestore(Stores.ROS2_HUMBLE)
    Header = ts.types["std_msgs/msg/Header"]
    Time = ts.types["builtin_interfaces/msg/Time"]
    Image = ts.types["sensor_msgs/msg/Image"]
    Compressed = ts.types["sensor_msgs/msg/CompressedImage"]
    with Writer(path, version=8) as writer:
        raw = writer.add_connection("/camera/image_raw", Image.__msgtype__, typestore=ts)
        comp = writer.add_connection("/camera/image_raw/compressed", Compressed.__msgtype__, typestore=ts)
        for i, (encoding, pixels, padding) in enumerate(frames):
            h, w = pixels.shape[:2]
            row = pixels.reshape(h, -1).view(np.uint8) if pixels.dtype == np.uint16 else pixels.reshape(h, -1)
            row = np.concatenate([row, np.zeros((h, padding), np.uint8)], axis=1)  # step > width * bpp
            msg = Image(header=Header(stamp=Time(sec=100 + i, nanosec=1000 * i), frame_id="cam_optical"),
                        height=h, width=w, encoding=encoding, is_bigendian=0, step=row.shape[1],
                        data=row.reshape(-1))
            writer.write(raw, (100 + i) * 10**9, ts.serialize_cdr(msg, Image.__msgtype__))
        for i, (fmt, data) in enumerate(compressed):
            msg = Compressed(header=Header(stamp=Time(sec=200 + i, nanosec=7), frame_id="cam_optical"), format=fmt,
                             data=np.frombuffer(data, np.uint8))
            writer.write(comp, (200 + i) * 10**9, ts.serialize_cdr(msg, Compressed.__msgtype__))


@pytest.fixture(scope="module")
def bag(tmp_path_factory):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)
    frames = [("rgb8", rgb, 0), ("bgr8", rgb[:, :, ::-1].copy(), 4), ("mono8", rgb[:, :, 0].copy(), 3),
              ("mono16", rng.integers(0, 65535, (24, 32), dtype=np.uint16), 0), ("rgb8", rgb, 0)]
    ok, jpeg = cv2.imencode(".jpg", rgb)
    ok, png = cv2.imencode(".png", rgb)
    compressed = [("rgb8; jpeg compressed bgr8", jpeg.tobytes()), ("png", png.tobytes()), ("jpeg", b"\xff\xd8broken")]
    path = str(tmp_path_factory.mktemp("bag") / "run1")
    _write_bag(path, frames, compressed)
    return path, frames, compressed, rgb


def _rows(out):
    with open(os.path.join(out, "data.jsonl")) as f:
        return [json.loads(line) for line in f]


def test_raw_frames_round_trip_losslessly(tmp_path, bag):
    from nanovla.cli import main

    path, frames, _, rgb = bag
    out = str(tmp_path / "raw")
    assert main(["data", "from-rosbag", path, "--topic", "/camera/image_raw", "--out", out]) == 0
    rows = _rows(out)
    assert len(rows) == 5
    assert rows[1]["stamp"] == {"sec": 101, "nanosec": 1000} and rows[1]["frame_id"] == "cam_optical"
    assert all(r["image"].endswith(".png") for r in rows)
    read = lambda r: cv2.imread(os.path.join(out, r["image"]), cv2.IMREAD_UNCHANGED)  # noqa: E731
    assert np.array_equal(read(rows[0])[:, :, ::-1], rgb)  # rgb8
    assert np.array_equal(read(rows[1])[:, :, ::-1], rgb)  # bgr8 with row padding -> the same RGB
    assert np.array_equal(read(rows[2]), rgb[:, :, 0])  # mono8 with row padding
    assert read(rows[3]).dtype == np.uint16 and np.array_equal(read(rows[3]), frames[3][1])  # 16-bit kept


def test_compressed_frames_every_n_and_corrupt_skipped(tmp_path, bag):
    from nanovla.data.rosbag import rosbag_to_dataset

    path, _, compressed, _ = bag
    out = str(tmp_path / "comp")
    summary = rosbag_to_dataset(path, "/camera/image_raw/compressed", out, log=None)
    assert (summary["messages"], summary["frames"], summary["skipped"]) == (3, 2, 1)
    rows = _rows(out)
    assert rows[0]["image"].endswith(".jpg") and rows[1]["image"].endswith(".png")
    with open(os.path.join(out, rows[0]["image"]), "rb") as f:
        assert f.read() == compressed[0][1]  # the recorded bytes, unchanged
    every = rosbag_to_dataset(path, "/camera/image_raw", str(tmp_path / "every"), every=2, log=None)
    assert every["frames"] == 3 and [r["stamp"]["sec"] for r in _rows(str(tmp_path / "every"))] == [100, 102, 104]


def test_rosbag_data_is_accepted_by_describe_and_eval(tmp_path, bag, tiny_checkpoint, capsys):
    from nanovla.cli import main

    path = bag[0]
    out = str(tmp_path / "frames")
    assert main(["data", "from-rosbag", path, "--topic", "/camera/image_raw", "--out", out, "--every", "2"]) == 0
    capsys.readouterr()
    rows = _rows(out)
    assert main(["describe", os.path.join(out, rows[0]["image"]), "--model", tiny_checkpoint, "--max-new-tokens",
                 "3", "--json"]) == 0
    assert main(["eval", "--data", out, "--model", tiny_checkpoint, "--max-new-tokens", "3",
                 "--out", str(tmp_path / "metrics.json")]) == 0  # frames only: no --format needed
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["images"] == 3 and len(metrics["predictions"]) == 3
    assert metrics["predictions"][0]["stamp"] == {"sec": 100, "nanosec": 0}


def test_bad_topic_is_one_clear_error(tmp_path, bag, capsys):
    from nanovla.cli import main

    assert main(["data", "from-rosbag", bag[0], "--topic", "/nope", "--out", str(tmp_path / "x")]) == 2
    assert "no topic '/nope'" in capsys.readouterr().err
