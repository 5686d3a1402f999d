"""`nanovla data to-yolo`: a generated scene directory as an ultralytics detection data set, and
(slow) ultralytics' own trainer on it, whose weights then feed a nanovla encoder."""

from __future__ import annotations

import json
import os

import pytest


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    from data_helpers import generate_scene_dir

    return generate_scene_dir(str(tmp_path_factory.mktemp("scenes")), count=10, seed=4)


def test_labels_are_normalised_boxes_of_every_object(scenes, tmp_path):
    from nanovla.cli import main
    from nanovla.data.scenes import COLOR_NAMES, KINDS

    out = tmp_path / "yolo"
    assert main(["data", "to-yolo", scenes, "--out", str(out), "--classes", "color_kind"]) == 0
    rows = [json.loads(line) for line in open(os.path.join(scenes, "data.jsonl"))]
    assert len(os.listdir(out / "images" / "train")) == 9 and len(os.listdir(out / "images" / "val")) == 1
    first = rows[0]
    lines = (out / "labels" / "train" / "000000.txt").read_text().splitlines()
    assert len(lines) == len(first["objects"])
    for line, obj in zip(lines, first["objects"]):
        cls, cx, cy, w, h = line.split()
        assert int(cls) == COLOR_NAMES.index(obj["color"]) * len(KINDS) + KINDS.index(obj["kind"])
        x0, y0, x1, y1 = obj["bbox"]
        assert float(cx) == pytest.approx(0.5 * (max(x0, 0) + min(x1, 640)) / 640, abs=1e-5)
        assert float(h) == pytest.approx((min(y1, 480) - max(y0, 0)) / 480, abs=1e-5)
    yaml_text = (out / "dataset.yaml").read_text()
    assert "val: images/val" in yaml_text and "63: white ring" in yaml_text


def test_a_bad_row_is_skipped_and_counted(scenes, tmp_path):
    from nanovla.data.yolo import export_yolo

    broken = tmp_path / "broken"
    os.makedirs(broken / "images")
    rows = open(os.path.join(scenes, "data.jsonl")).read().splitlines()[:3]
    for row in rows:
        name = json.loads(row)["image"]
        os.link(os.path.join(scenes, name), broken / name)
    (broken / "images" / "000001.png").write_bytes(b"not a png")
    (broken / "data.jsonl").write_text("\n".join(rows) + "\n")
    logged = []
    counts = export_yolo(str(broken), str(tmp_path / "out"), val_fraction=0.0, log=logged.append)
    assert counts["train"] == 2 and counts["skipped"] == 1 and "000001.png" in logged[0]


def test_unknown_class_set_is_refused(scenes, tmp_path):
    from nanovla.cli import main

    with pytest.raises(SystemExit):
        main(["data", "to-yolo", scenes, "--out", str(tmp_path / "o"), "--classes", "shape"])


@pytest.mark.slow
def test_ultralytics_trainer_on_the_scenes_feeds_the_encoder(scenes, tmp_path):
    """The issue's suggested stage 0: ultralytics' own trainer, then its best.pt as nanovla's encoder."""
    import torch
    from ultralytics import YOLO

    from nanovla.model.config import VisionConfig
    from nanovla.data.yolo import export_yolo
    from nanovla.model.vision import YoloNeckEncoder

    export_yolo(scenes, str(tmp_path / "yolo"), log=lambda m: None)
    YOLO("yolov9t.yaml").train(data=str(tmp_path / "yolo" / "dataset.yaml"), epochs=1, imgsz=64, batch=4,
                               workers=0, device="cpu", plots=False, pretrained=False, amp=False,
                               project=str(tmp_path / "runs"), name="detect", verbose=False)
    best = tmp_path / "runs" / "detect" / "weights" / "best.pt"
    assert best.is_file()
    encoder = YoloNeckEncoder(VisionConfig(arch=str(best), image_height=64, image_width=96))
    trained = torch.load(best, weights_only=False)["model"].float()
    torch.testing.assert_close(encoder.layers[0].conv.weight, trained.model[0].conv.weight)
    assert [f.shape[1] for f in encoder(torch.rand(1, 3, 64, 96))] == encoder.channels
